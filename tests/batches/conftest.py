"""Fixtures of the Message Batches tests: a gateway whose batch loop polls fast, and the
mock upstream's batches ending after half a second."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable

import anthropic
import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.money import ledger
from tests.support.batches import FAST_POLL
from tests.support.customers import Customer, client_for, reset_pool
from tests.support.gateway import start_gateway, stop_gateway


@pytest.fixture
async def bgw(
    db: asyncpg.Connection, make_config, mock_upstream: MockUpstream
) -> AsyncIterator[app.Gateway]:
    await reset_pool(db)
    mock_upstream.batches.process_seconds = 0.3
    gateway = await start_gateway(
        make_config(redis_prefix=f"batch-{secrets.token_hex(4)}:", **FAST_POLL)
    )
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)
    problems = await ledger.audit(db)
    assert not problems, [p.as_dict() for p in problems]


@pytest.fixture
async def sdk() -> AsyncIterator[Callable[[app.Gateway, Customer], anthropic.AsyncAnthropic]]:
    """``sdk(gateway, customer)``: an SDK client, closed after the test."""
    made: list[anthropic.AsyncAnthropic] = []

    def make(gateway: app.Gateway, customer: Customer) -> anthropic.AsyncAnthropic:
        made.append(client_for(gateway, customer))
        return made[-1]

    yield make
    for client in made:
        await client.close()
