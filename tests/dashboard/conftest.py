"""Fixtures of the dashboard tests: a gateway (mock upstream, its own Redis prefix) with
a cheap bcrypt cost for the passwords, and a page client on it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dashboard.passwords import Passwords
from alicode_gw.money import ledger
from tests.support.customers import reset_pool
from tests.support.dashboard import PageClient
from tests.support.gateway import start_gateway, stop_gateway

LOW_BCRYPT_COST = 4


@pytest.fixture
async def dash_gw(db: asyncpg.Connection, make_config) -> AsyncIterator[app.Gateway]:
    await reset_pool(db)
    gateway = await start_gateway(make_config(redis_prefix=f"dash-{secrets.token_hex(4)}:"))
    gateway.state.dashboard.passwords = Passwords(LOW_BCRYPT_COST)
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)
    problems = await ledger.audit(db)
    assert not problems, [p.as_dict() for p in problems]


@pytest.fixture
async def client(dash_gw: app.Gateway) -> AsyncIterator[PageClient]:
    page_client = PageClient(dash_gw.url)
    try:
        yield page_client
    finally:
        await page_client.close()
