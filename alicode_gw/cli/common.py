"""Shared plumbing of the CLI commands: a database/Redis session and output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import uvloop
from redis.asyncio import Redis

from alicode_gw.config import Config, ConfigError
from alicode_gw.store.backends import (
    Backends,
    configured_backends,
    create_redis,
    dev_servers,
    dev_servers_path,
    missing_variables,
)

T = TypeVar("T")

BACKENDS_HELP = """\
The operator commands use ALICODE_DATABASE_URL and ALICODE_REDIS_URL. With neither set,
they use the servers of an `alicode-gw dev` running on the same data dir (it names them
in <ALICODE_DATA_DIR>/dev-servers.env while it runs; ALICODE_DATA_DIR defaults to ./data,
which is why scripts/dev's banner prints the command with an absolute ALICODE_DATA_DIR);
otherwise they exit with status 2. They never start a server of their own."""


def admin_backends(config: Config) -> Backends:
    """The servers an operator command works on: the configured ones, or with no DSN at
    all those of the ``alicode-gw dev`` running on ``config.data_dir``."""
    if len(missing_variables(config)) < 2:
        return configured_backends(config)
    found = dev_servers(config.data_dir)
    if found is None:
        where = dev_servers_path(config.data_dir).parent.resolve()
        raise ConfigError(
            "ALICODE_DATABASE_URL and ALICODE_REDIS_URL",
            f"not set, and no `alicode-gw dev` runs on ALICODE_DATA_DIR={where}; set them, "
            "or set ALICODE_DATA_DIR to the data dir of a running `alicode-gw dev`",
        )
    return found


def with_db(config: Config, work: Callable[[asyncpg.Connection, Redis], Awaitable[T]]) -> T:
    """Run ``work(conn, redis)`` against :func:`admin_backends`."""
    backends = admin_backends(config)

    async def session() -> T:
        conn = await asyncpg.connect(backends.database_url)
        redis = create_redis(backends.redis_url)
        try:
            return await work(conn, redis)
        finally:
            await redis.aclose()
            await conn.close()

    return uvloop.run(session())


def account_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-commands of ``account``, shared by every group that adds to it (accounts:
    create/stop; billing: topup/show): the existing ones, or a new ``account`` parser."""
    parser = subparsers.choices.get("account")
    if parser is None:
        parser = subparsers.add_parser("account", help="customer accounts and balances")
        return parser.add_subparsers(dest="account_command", metavar="ACTION", required=True)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="account_command", metavar="ACTION", required=True)


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print ``data`` as JSON (``--json``) or ``text`` for a person."""
    if as_json:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text if text is not None else data)


def fail(message: str, code: int = 1) -> int:
    print(f"alicode-gw: {message}", file=sys.stderr)
    return code
