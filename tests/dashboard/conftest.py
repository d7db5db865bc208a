"""Fixtures of the dashboard tests: the messages tests' gateway (mock upstream, a Redis
prefix of its own, ``audit`` checked at the end) with a cheap bcrypt cost for the
dashboard's passwords, and a page client on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from alicode_gw import app
from alicode_gw.dashboard.passwords import Passwords
from tests.support.dashboard import PageClient
from tests.support.keys import LOW_COST


@pytest.fixture
async def dash_gw(gw: app.Gateway) -> app.Gateway:
    gw.state.dashboard.passwords = Passwords(LOW_COST)
    return gw


@pytest.fixture
async def client(dash_gw: app.Gateway) -> AsyncIterator[PageClient]:
    page_client = PageClient(dash_gw.url)
    try:
        yield page_client
    finally:
        await page_client.close()
