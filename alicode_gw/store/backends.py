"""Where PostgreSQL and Redis are (the configured DSNs), and their connection pools.

Production processes (``serve``, ``worker``, the ``serve --workers`` supervisor) need
both DSNs and refuse to start without them; embedded servers belong to ``alicode-gw
dev`` and the tests (:mod:`alicode_gw.dev.embedded`). A running ``alicode-gw dev``
writes the DSNs it serves on to ``<data dir>/dev-servers.env`` so that the operator
commands (``alicode-gw account …``) can reach its databases: :func:`dev_servers`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis

from alicode_gw.config import Config, ConfigError, read_env_file

DATABASE_VARIABLE = "ALICODE_DATABASE_URL"
REDIS_VARIABLE = "ALICODE_REDIS_URL"
DEV_SERVERS_FILE = "dev-servers.env"


@dataclass(frozen=True, slots=True)
class Backends:
    """Where the data lives."""

    database_url: str
    redis_url: str


def missing_variables(config: Config) -> list[str]:
    """The DSN variables ``config`` leaves unset."""
    missing = []
    if not config.database_url:
        missing.append(DATABASE_VARIABLE)
    if not config.redis_url:
        missing.append(REDIS_VARIABLE)
    return missing


def configured_backends(config: Config) -> Backends:
    """The configured DSNs; :class:`ConfigError` (one line, naming the unset variables)
    when either is missing. Never starts a server."""
    missing = missing_variables(config)
    if missing:
        raise ConfigError(
            " and ".join(missing),
            "not set; the gateway needs its PostgreSQL and Redis "
            "(for a local run with embedded servers and a mock upstream: alicode-gw dev)",
        )
    assert config.database_url is not None and config.redis_url is not None
    return Backends(config.database_url, config.redis_url)


def dev_servers_path(data_dir: Path) -> Path:
    return data_dir / DEV_SERVERS_FILE


def write_dev_servers(data_dir: Path, backends: Backends) -> Path:
    """Record the DSNs a running ``alicode-gw dev`` serves on (its caller removes the
    file when it stops)."""
    path = dev_servers_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(
        f"# written by the running `alicode-gw dev`; removed when it stops\n"
        f"{DATABASE_VARIABLE}={backends.database_url}\n"
        f"{REDIS_VARIABLE}={backends.redis_url}\n",
        encoding="utf-8",
    )
    os.replace(scratch, path)
    return path


def dev_servers(data_dir: Path) -> Backends | None:
    """The DSNs of the ``alicode-gw dev`` running on ``data_dir``, if one runs there."""
    path = dev_servers_path(data_dir)
    if not path.is_file():
        return None
    values = read_env_file(path)
    database_url, redis_url = values.get(DATABASE_VARIABLE), values.get(REDIS_VARIABLE)
    if not database_url or not redis_url:
        raise ConfigError("ALICODE_DATA_DIR", f"{path} does not name both servers")
    return Backends(database_url, redis_url)


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
