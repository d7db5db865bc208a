"""Fixtures of the response cache tests: gateways with the cache on (and variants)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.money import ledger
from tests.support.customers import own_gateway
from tests.support.gateway import stop_gateway

CACHE_SECRET = "respcache-test-secret-0123456789abcdefghijkl"

CacheGateway = Callable[..., Awaitable[app.Gateway]]


@pytest.fixture
async def cache_gateway(db: asyncpg.Connection, make_config) -> AsyncIterator[CacheGateway]:
    """Start gateways with the response cache on (``changes`` to the test config on top);
    each is stopped after the test, and the books must add up."""
    started: list[app.Gateway] = []

    async def start(**changes: object) -> app.Gateway:
        settings: dict[str, object] = {
            "response_cache": True,
            "response_cache_secret": CACHE_SECRET,
            **changes,
        }
        gateway = await own_gateway(db, make_config, "rc", **settings)
        started.append(gateway)
        return gateway

    try:
        yield start
    finally:
        for gateway in started:
            await stop_gateway(gateway)
    problems = await ledger.audit(db)
    assert not problems, [p.as_dict() for p in problems]


@pytest.fixture
async def cache_gw(cache_gateway: CacheGateway) -> app.Gateway:
    return await cache_gateway()
