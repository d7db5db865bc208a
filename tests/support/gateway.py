"""Starting and stopping gateways and migrated databases for tests (plain helpers;
the fixtures built on them are in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from alicode_gw import app
from alicode_gw.config import Config
from alicode_gw.routes import Router
from alicode_gw.store import migrate
from alicode_gw.store.backends import Backends

UPSTREAM_KEYS = ("sk-ant-test-primary-0001", "sk-ant-test-second-0002", "sk-ant-test-third-0003")


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (works for host and socket DSNs)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.contextmanager
def migrated_database(server_database_url: str, prefix: str) -> Iterator[str]:
    """Create a database named ``prefix_<random>``, migrate it, yield its URL, drop it
    (for session and module fixtures: it runs its own short event loops)."""
    name = f"{prefix}_{secrets.token_hex(5)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        url = with_database(server_database_url, name)
        asyncio.run(migrate.run(url))
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def start_gateway(config: Config, router: Router | None = None) -> app.Gateway:
    assert config.database_url is not None and config.redis_url is not None
    state = await app.open_state(config, Backends(config.database_url, config.redis_url))
    gateway = app.Gateway(state, router)
    await gateway.start(port=0)
    return gateway


async def stop_gateway(gateway: app.Gateway) -> None:
    await gateway.stop()
    await app.close_state(gateway.state)
