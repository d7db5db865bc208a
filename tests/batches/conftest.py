"""Fixtures of the Message Batches tests: a gateway whose batch loop polls fast, and the
mock upstream's batches ending after half a second."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anthropic
import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.money import ledger
from tests.support.batches import FAST_POLL
from tests.support.customers import Customer, client_for, own_gateway
from tests.support.gateway import stop_gateway


@pytest.fixture
async def bgw(
    db: asyncpg.Connection, make_config, mock_upstream: MockUpstream
) -> AsyncIterator[app.Gateway]:
    """A gateway whose batch loop polls fast; the books are audited after the test."""
    mock_upstream.batches.process_seconds = 0.3
    gateway = await own_gateway(db, make_config, "batch", **FAST_POLL)
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)
    assert not await ledger.audit(db)


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
