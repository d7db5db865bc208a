"""The keys page's response-cache switch: a key kept out of the response cache is
answered BYPASS on every request (docs/response-cache.md), and let back in, HIT again."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import anthropic
import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dashboard.passwords import Passwords
from alicode_gw.money import ledger
from tests.support.customers import MODEL, own_gateway
from tests.support.dashboard import PageClient
from tests.support.gateway import stop_gateway
from tests.support.keys import LOW_COST, unique_email

PASSWORD = "correct horse battery"


@pytest.fixture
async def cache_dash(db: asyncpg.Connection, make_config) -> AsyncIterator[app.Gateway]:
    gateway = await own_gateway(
        db,
        make_config,
        "dash-rc",
        response_cache=True,
        response_cache_secret="dashboard-toggle-secret-0123456789abcdef",
    )
    gateway.state.dashboard.passwords = Passwords(LOW_COST)
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)
    assert not await ledger.audit(db)


async def test_a_key_is_kept_out_of_the_response_cache_and_let_back_in(
    cache_dash: app.Gateway, db: asyncpg.Connection
) -> None:
    email = unique_email()
    pages, other = PageClient(cache_dash.url), PageClient(cache_dash.url)
    try:
        await pages.register(email, PASSWORD)
        await ledger.topup(db, email, 1_000_000_000)
        created, secret = await pages.create_key("k")
        key_id = re.search(r'data-key-id="(\d+)"', created.text).group(1)
        sdk = anthropic.AsyncAnthropic(api_key=secret, base_url=cache_dash.url, max_retries=0)
        ask = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": email}]}

        async def verdict() -> str:
            raw = await sdk.messages.with_raw_response.create(**ask)
            return raw.headers.get("x-cache")

        assert [await verdict(), await verdict()] == ["MISS", "HIT"]
        # another account cannot switch it
        await other.register(unique_email(), PASSWORD)
        await other.get("/dashboard/keys")
        refused = await other.post(
            f"/dashboard/keys/{key_id}/response-cache", {"response_cache": "on"}
        )
        assert refused.status == 404
        await pages.get("/dashboard/keys")
        off = await pages.post(
            f"/dashboard/keys/{key_id}/response-cache", {"response_cache": "off"}
        )
        assert off.status == 200 and "no response cache" in off.text
        assert [await verdict(), await verdict()] == ["BYPASS", "BYPASS"]
        on = await pages.post(f"/dashboard/keys/{key_id}/response-cache", {"response_cache": "on"})
        assert on.status == 200 and "no response cache" not in on.text
        assert await verdict() == "HIT"
        await sdk.close()
        assert not await cache_dash.state.tasks.settle(5.0)
        # The usage pages count a hit as a request that used no tokens.
        account_id = await ledger.account_id_by_email(db, email)
        rows = await db.fetch(
            "SELECT input_tokens, cache_hit FROM ledger WHERE account_id = $1 AND kind = 'charge'",
            account_id,
        )
        assert sorted(r["cache_hit"] for r in rows) == [False, False, False, True, True]
        assert all(r["input_tokens"] > 0 for r in rows)
        usage = await db.fetchrow(
            "SELECT requests, input_tokens FROM dashboard.usage_by($1, current_date - 1, "
            "current_date + 1, ARRAY['key'])",
            account_id,
        )
        assert usage["requests"] == 5
        assert usage["input_tokens"] == sum(r["input_tokens"] for r in rows if not r["cache_hit"])
    finally:
        await pages.close()
        await other.close()
