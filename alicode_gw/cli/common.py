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

from alicode_gw.config import Config
from alicode_gw.store.backends import create_redis, start_backends

T = TypeVar("T")


def with_db(config: Config, work: Callable[[asyncpg.Connection, Redis], Awaitable[T]]) -> T:
    """Run ``work(conn, redis)`` against the configured (or embedded) servers."""
    backends = start_backends(config)

    async def session() -> T:
        conn = await asyncpg.connect(backends.database_url)
        redis = create_redis(backends.redis_url)
        try:
            return await work(conn, redis)
        finally:
            await redis.aclose()
            await conn.close()

    try:
        return uvloop.run(session())
    finally:
        backends.stop()


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
