"""The upstream call over real HTTP: a redirect the upstream (or anything in between)
answers is a failed attempt, never followed, so neither the pooled credential nor the
customer's prompt goes to the host it names."""

from __future__ import annotations

import secrets

import anthropic
import asyncpg
import pytest

from alicode_gw.dev.mock_upstream import MockUpstream
from tests.support.customers import MODEL, client_for, make_customer, own_gateway
from tests.support.gateway import stop_gateway


async def test_a_redirect_is_not_followed(
    db: asyncpg.Connection,
    make_config,
    mock_upstream: MockUpstream,
    redirector: tuple[str, list[str]],
) -> None:
    url, asked = redirector
    gateway = await own_gateway(db, make_config, "redirect", upstream_url=url)
    try:
        customer = await make_customer(db)
        prompt = f"a secret prompt {secrets.token_hex(8)}"
        async with client_for(gateway, customer) as client:
            with pytest.raises(anthropic.APIStatusError) as info:
                await client.messages.create(
                    model=MODEL,
                    max_tokens=20,
                    messages=[{"role": "user", "content": prompt}],
                )
    finally:
        await stop_gateway(gateway)
    assert info.value.status_code == 502
    assert "/v1/messages" in asked
    # Nothing reached the host the redirect named: no credential, no prompt.
    assert not [ex for ex in mock_upstream.exchanges if prompt.encode() in ex.body]
