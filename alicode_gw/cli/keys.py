"""``key create|update|revoke|list``: customer API keys. The secret is printed once, at creation."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alicode_gw.cli.common import emit, fail, with_db
from alicode_gw.config import Config
from alicode_gw.identity import accounts, keylimits, revocation
from alicode_gw.money.usd import format_usd


def _positive_int(text: str) -> int:
    try:
        return keylimits.positive_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    key = subparsers.add_parser("key", help="customer API keys")
    sub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="create a key (its secret is printed once)")
    create.add_argument("--email", required=True, help="the account's email")
    create.add_argument("--name", required=True, help="a label, e.g. production")
    create.add_argument("--rpm", type=_positive_int, help="requests per minute")
    create.add_argument("--concurrency", type=_positive_int, help="requests in flight")
    create.add_argument(
        "--budget-tokens", type=_positive_int, help="input+output tokens per rolling 5 hours"
    )
    create.add_argument(
        "--spend-cap-usd", help="revoke the key automatically once it has spent this much"
    )
    create.add_argument("--models", help="comma-separated allowed models (default: all)")
    create.add_argument(
        "--no-response-cache",
        dest="response_cache",
        action="store_false",
        help="keep the key's requests out of the response cache",
    )
    create.add_argument("--json", action="store_true", help="machine-readable output")
    create.set_defaults(handler=run_create)

    revoke = sub.add_parser("revoke", help="revoke a key on every node within seconds")
    revoke.add_argument("id", metavar="ID", help="the key's id or public id")
    revoke.add_argument("--json", action="store_true", help="machine-readable output")
    revoke.set_defaults(handler=run_revoke)

    update = sub.add_parser("update", help="change a key's settings")
    update.add_argument("id", metavar="ID", help="the key's id or public id")
    update.add_argument(
        "--response-cache",
        choices=("on", "off"),
        required=True,
        help="let the key's requests use the response cache, or keep them out of it",
    )
    update.add_argument("--json", action="store_true", help="machine-readable output")
    update.set_defaults(handler=run_update)

    listing = sub.add_parser("list", help="an account's keys (never their secrets)")
    listing.add_argument("--email", required=True)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=run_list)


def key_dict(record: accounts.KeyRecord) -> dict[str, Any]:
    cap = record.spend_cap_nanos
    return {
        "id": record.id,
        "public_id": record.public_id,
        "masked": record.masked,
        "account_id": record.account_id,
        "name": record.name,
        "status": record.status,
        "revoked_reason": record.revoked_reason,
        "rpm": record.rpm_limit,
        "concurrency": record.concurrency_limit,
        "budget_tokens": record.budget_tokens,
        "spend_cap_usd": None if cap is None else format_usd(cap),
        "spent_usd": format_usd(record.spent_nanos),
        "models": None if record.allowed_models is None else list(record.allowed_models),
        "response_cache": record.response_cache,
        "last_used_at": record.last_used_at.isoformat() if record.last_used_at else None,
        "created_at": record.created_at.isoformat(),
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
    }


def run_create(args: argparse.Namespace, config: Config) -> int:
    cap = models = None
    try:
        if args.spend_cap_usd is not None:
            cap = keylimits.spend_cap(args.spend_cap_usd)
    except ValueError as exc:
        return fail(f"--spend-cap-usd: {exc}")
    try:
        if args.models is not None:
            models = keylimits.allowed_models(args.models)
    except ValueError as exc:
        return fail(f"--models: {exc}")

    async def work(conn: asyncpg.Connection, redis: Redis) -> tuple[accounts.KeyRecord, str]:
        account = await accounts.find_account(conn, args.email)
        if account is None:
            raise accounts.AccountNotFoundError(f"no account with email {args.email!r}")
        return await accounts.create_key(
            conn,
            account.id,
            args.name,
            rpm=args.rpm,
            concurrency=args.concurrency,
            budget_tokens=args.budget_tokens,
            spend_cap_nanos=cap,
            models=models,
            response_cache=args.response_cache,
        )

    try:
        record, secret_key = with_db(config, work)
    except accounts.AccountError as exc:
        return fail(str(exc))
    data = {**key_dict(record), "key": secret_key}
    text = (
        f"created key {record.id} ({record.name}) for {args.email}\n"
        f"{secret_key}\n"
        "This is the only time the key is shown: store it now."
    )
    emit(data, args.json, text)
    return 0


def run_revoke(args: argparse.Namespace, config: Config) -> int:
    async def work(conn: asyncpg.Connection, redis: Redis) -> accounts.KeyRecord:
        return await revocation.revoke_key(conn, redis, config.redis_prefix, args.id)

    try:
        record = with_db(config, work)
    except accounts.AccountError as exc:
        return fail(str(exc))
    emit(key_dict(record), args.json, f"revoked key {record.id} ({record.masked})")
    return 0


def run_update(args: argparse.Namespace, config: Config) -> int:
    enabled = args.response_cache == "on"

    async def work(conn: asyncpg.Connection, redis: Redis) -> accounts.KeyRecord:
        return await accounts.set_response_cache(conn, args.id, enabled)

    try:
        record = with_db(config, work)
    except accounts.AccountError as exc:
        return fail(str(exc))
    text = f"key {record.id} ({record.masked}): response cache {args.response_cache}"
    emit(key_dict(record), args.json, text)
    return 0


def run_list(args: argparse.Namespace, config: Config) -> int:
    async def work(conn: asyncpg.Connection, redis: Redis) -> list[accounts.KeyRecord]:
        return await accounts.list_keys(conn, args.email)

    try:
        records = with_db(config, work)
    except accounts.AccountError as exc:
        return fail(str(exc))
    lines = [
        f"{r.id:>6}  {r.masked:<26} {r.status:<8} {r.name}"
        + (f"  (rpm {r.rpm_limit})" if r.rpm_limit else "")
        for r in records
    ]
    emit([key_dict(r) for r in records], args.json, "\n".join(lines) or "no keys")
    return 0
