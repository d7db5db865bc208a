"""Connections to PostgreSQL and Redis, embedded or configured."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis

from alicode_gw.config import Config
from alicode_gw.dev.embedded import EmbeddedPostgres, EmbeddedRedis

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Backends:
    """Where the data lives, and the embedded servers this process started (if any)."""

    database_url: str
    redis_url: str
    embedded_postgres: EmbeddedPostgres | None = None
    embedded_redis: EmbeddedRedis | None = None

    def stop(self) -> None:
        """Stop the embedded servers this process started (configured ones are left)."""
        if self.embedded_redis is not None:
            self.embedded_redis.stop()
        if self.embedded_postgres is not None:
            self.embedded_postgres.stop()


def start_backends(config: Config) -> Backends:
    """Use the configured DSNs; start embedded servers for the ones not configured.

    Blocking (it may start processes): call it before the event loop serves.
    """
    embedded_pg = embedded_redis = None
    database_url = config.database_url
    if database_url is None:
        embedded_pg = EmbeddedPostgres(config.data_dir)
        database_url = embedded_pg.start()
        log.info("embedded PostgreSQL under %s", embedded_pg.pgdata)
    redis_url = config.redis_url
    if redis_url is None:
        embedded_redis = EmbeddedRedis(config.data_dir)
        try:
            redis_url = embedded_redis.start()
        except Exception:
            if embedded_pg is not None:
                embedded_pg.stop()
            raise
        log.info("embedded Redis at %s", embedded_redis.socket_path)
    return Backends(database_url, redis_url, embedded_pg, embedded_redis)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """The gateway's queries leave no session state behind (no LISTEN, no SET, no
    session-level advisory lock, no open cursor), so the pool skips asyncpg's reset
    query on every release: one round trip less per database call."""


async def create_pool(database_url: str, size: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=size, command_timeout=30, reset=_no_reset
    )
    assert pool is not None
    return pool


def create_redis(redis_url: str, max_connections: int = 100) -> Redis:
    # A blocking pool: past max_connections a command waits (up to 5 s) for a free
    # connection; the default pool raises MaxConnectionsError at once under load.
    pool = BlockingConnectionPool.from_url(
        redis_url,
        max_connections=max_connections,
        timeout=5,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)
