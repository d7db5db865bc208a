"""``account create`` and ``account stop`` (emergency stop). ``account topup`` and
``account show`` live with billing (``cli/billing.py``) under the same ``account``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alicode_gw.cli.common import account_subparsers, emit, fail, with_db
from alicode_gw.config import Config
from alicode_gw.identity import accounts, auth


def register(subparsers: argparse._SubParsersAction) -> None:
    account = account_subparsers(subparsers)
    create = account.add_parser("create", help="create a customer account")
    create.add_argument("--email", required=True)
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read a dashboard password from the first line of standard input",
    )
    create.add_argument("--json", action="store_true", help="machine-readable output")
    create.set_defaults(handler=run_create)

    stop = account.add_parser(
        "stop", help="emergency stop: stop the account and revoke all its keys on every node"
    )
    stop.add_argument("--email", required=True)
    stop.add_argument("--json", action="store_true", help="machine-readable output")
    stop.set_defaults(handler=run_stop)


def account_dict(account: accounts.Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "email": account.email,
        "status": account.status,
        "created_at": account.created_at.isoformat(),
        "stopped_at": account.stopped_at.isoformat() if account.stopped_at else None,
    }


def run_create(args: argparse.Namespace, config: Config) -> int:
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            return fail("--password-stdin: standard input holds no password")

    async def work(conn: asyncpg.Connection, redis: Redis) -> accounts.Account:
        return await accounts.create_account(conn, args.email, password)

    try:
        account = with_db(config, work)
    except accounts.AccountError as exc:
        return fail(str(exc))
    emit(account_dict(account), args.json, f"created account {account.id} <{account.email}>")
    return 0


def run_stop(args: argparse.Namespace, config: Config) -> int:
    async def work(conn: asyncpg.Connection, redis: Redis) -> list[str]:
        revoked = await accounts.stop_account(conn, args.email)
        await auth.announce_revoked(redis, config.redis_prefix, revoked)
        return revoked

    try:
        revoked = with_db(config, work)
    except accounts.AccountError as exc:
        return fail(str(exc))
    emit(
        {"email": args.email, "status": "stopped", "revoked_keys": revoked},
        args.json,
        f"stopped {args.email}; revoked {len(revoked)} key(s)"
        + (f": {', '.join(revoked)}" if revoked else ""),
    )
    return 0
