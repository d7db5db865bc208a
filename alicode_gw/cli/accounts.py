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
from alicode_gw.dashboard import sessions, store
from alicode_gw.identity import accounts, revocation


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

    operator = account.add_parser(
        "operator", help="let an account use the dashboard's /admin pages (or no longer)"
    )
    operator.add_argument("--email", required=True)
    operator.add_argument("--off", action="store_true", help="take the operator flag away")
    operator.set_defaults(handler=run_operator)

    link = account.add_parser(
        "password-link",
        help="print a one-time link with which the account's owner sets a dashboard password",
    )
    link.add_argument("--email", required=True)
    link.add_argument(
        "--hours", type=float, default=72.0, help="how long the link works (default 72)"
    )
    link.add_argument("--json", action="store_true", help="machine-readable output")
    link.set_defaults(handler=run_password_link)


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
        return await revocation.stop_account(conn, redis, config.redis_prefix, args.email)

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


def run_operator(args: argparse.Namespace, config: Config) -> int:
    async def work(conn: asyncpg.Connection, redis: Redis) -> int | None:
        return await store.value(conn, "set_operator", email=args.email, operator=not args.off)

    if with_db(config, work) is None:
        return fail(f"no account with email {args.email!r}")
    print(f"{args.email} is {'no longer ' if args.off else ''}an operator")
    return 0


def dashboard_base(config: Config) -> str:
    return config.public_base_url or f"http://{config.listen_host}:{config.listen_port}"


def run_password_link(args: argparse.Namespace, config: Config) -> int:
    if not 0 < args.hours <= 24 * 30:
        return fail("--hours: 0 to 720")
    token = sessions.new_token()

    async def work(conn: asyncpg.Connection, redis: Redis) -> object:
        account = await accounts.find_account(conn, args.email)
        if account is None or account.status == "deleted":
            return None
        return await store.value(
            conn,
            "password_link_open",
            token_hash=sessions.token_hash(token),
            account_id=account.id,
            lifetime_s=args.hours * 3600,
        )

    expires = with_db(config, work)
    if expires is None:
        return fail(f"no account with email {args.email!r}")
    url = f"{dashboard_base(config)}/dashboard/setup?token={token}"
    emit(
        {"email": args.email, "url": url, "expires_at": str(expires)},
        args.json,
        f"{url}\nworks once, until {expires}; send it to the owner of {args.email}",
    )
    return 0
