"""``price``, ``account topup|show`` and ``audit``: the price table and the books."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alicode_gw.cli.common import account_subparsers, emit, fail, with_db
from alicode_gw.config import Config
from alicode_gw.money import catalog, ledger
from alicode_gw.money.usd import parse_usd
from alicode_gw.upstream import models as upstream_models

_PRICE_FLAGS = (
    ("--input", "input_price", "input"),
    ("--output", "output_price", "output"),
    ("--cache-write-5m", "cache_write_5m", "5-minute cache write (default 1.25 x input)"),
    ("--cache-write-1h", "cache_write_1h", "1-hour cache write (default 2 x input)"),
    ("--cache-read", "cache_read", "cache read (default 0.1 x input)"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    price = subparsers.add_parser("price", help="the model price table")
    price_sub = price.add_subparsers(dest="price_command", metavar="ACTION", required=True)
    listing = price_sub.add_parser(
        "list", help="every model, family (MODEL-PREFIX-*) and alias with its prices"
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument(
        "--missing",
        action="store_true",
        help="instead: the models the upstream serves that no price covers (hidden "
        "from /v1/models), as of the gateway's last fetch of its list",
    )
    listing.set_defaults(handler=run_price_list)
    setter = price_sub.add_parser(
        "set",
        help="set the prices of a model id or of a family (e.g. 'claude-sonnet-*') in USD "
        "per million tokens (creates a new entry)",
    )
    setter.add_argument("model")
    for flag, dest, what in _PRICE_FLAGS:
        setter.add_argument(
            flag, dest=dest, required=flag in ("--input", "--output"), help=f"{what}, USD/MTok"
        )
    setter.add_argument("--batch-discount", type=int, help="batch discount in percent")
    setter.add_argument("--display-name", help="display name of a new model")
    setter.set_defaults(handler=run_price_set)
    alias = price_sub.add_parser("alias", help="map ALIAS to the priced model TARGET")
    alias.add_argument("alias")
    alias.add_argument("target")
    alias.set_defaults(handler=run_price_alias)

    account = account_subparsers(subparsers)
    top = account.add_parser("topup", help="credit an account's prepaid balance")
    top.add_argument("--email", required=True)
    top.add_argument("--usd", required=True, help="amount in USD (exact, up to 9 decimals)")
    top.add_argument("--note", help="recorded in the ledger row")
    top.add_argument("--json", action="store_true", help="machine-readable output")
    top.set_defaults(handler=run_topup)
    show = account.add_parser("show", help="an account with its balance and held amount")
    show.add_argument("--email", required=True)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=run_account_show)

    audit = subparsers.add_parser(
        "audit", help="check every balance equals top-ups minus charges (exit 1 if not)"
    )
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    audit.set_defaults(handler=run_audit)


def _price_row(info: catalog.ModelInfo) -> dict[str, Any]:
    p = info.prices
    return {
        "id": info.id,
        "alias_of": info.target if info.is_alias else None,
        "display_name": info.display_name,
        "input_usd_per_mtok": catalog.format_price(p.input),
        "output_usd_per_mtok": catalog.format_price(p.output),
        "cache_write_5m_usd_per_mtok": catalog.format_price(p.cache_write_5m),
        "cache_write_1h_usd_per_mtok": catalog.format_price(p.cache_write_1h),
        "cache_read_usd_per_mtok": catalog.format_price(p.cache_read),
        "batch_discount_pct": p.batch_discount_pct,
    }


def run_price_list(args: argparse.Namespace, config: Config) -> int:
    if args.missing:
        return run_price_missing(args, config)

    async def work(conn: asyncpg.Connection, redis: Redis) -> list[catalog.ModelInfo]:
        return await catalog.load_models(conn)

    models = with_db(config, work)
    rows = [_price_row(info) for info in models]
    header = f"{'model':<26} {'input':>8} {'output':>8} {'cw-5m':>8} {'cw-1h':>8} "
    header += f"{'read':>8} {'batch':>6}  (USD per million tokens)"
    lines = [header]
    for row in rows:
        name = row["id"] + (f" -> {row['alias_of']}" if row["alias_of"] else "")
        lines.append(
            f"{name:<26} {row['input_usd_per_mtok']:>8} {row['output_usd_per_mtok']:>8} "
            f"{row['cache_write_5m_usd_per_mtok']:>8} {row['cache_write_1h_usd_per_mtok']:>8} "
            f"{row['cache_read_usd_per_mtok']:>8} {row['batch_discount_pct']:>5}%"
        )
    emit(rows, args.json, "\n".join(lines))
    return 0


def run_price_missing(args: argparse.Namespace, config: Config) -> int:
    """The upstream's models (as last stored by a gateway) that resolve to no price."""

    async def work(
        conn: asyncpg.Connection, redis: Redis
    ) -> tuple[list[catalog.ModelInfo], list[upstream_models.UpstreamModel]]:
        return await catalog.load_models(conn), await upstream_models.load(conn)

    priced, served = with_db(config, work)
    by_id = {info.id: info for info in priced}
    rows = [
        {
            "id": m.id,
            "display_name": m.display_name,
            "created_at": m.created_at.isoformat().replace("+00:00", "Z"),
        }
        for m in served
        if catalog.resolve_in(by_id, m.id) is None
    ]
    text = "\n".join(f"{r['id']:<32} {r['display_name']} ({r['created_at'][:10]})" for r in rows)
    emit(rows, args.json, text or "every model the upstream serves has a price")
    return 0


def run_price_set(args: argparse.Namespace, config: Config) -> int:
    try:
        prices = {
            dest: catalog.parse_price(getattr(args, dest))
            for _, dest, _ in _PRICE_FLAGS
            if getattr(args, dest) is not None
        }
    except catalog.PriceError as exc:
        return fail(str(exc))
    if args.batch_discount is not None and not 0 <= args.batch_discount <= 100:
        return fail("--batch-discount must be 0-100")

    async def work(conn: asyncpg.Connection, redis: Redis) -> dict[str, Any]:
        return await catalog.set_price(
            conn,
            args.model,
            batch_discount_pct=args.batch_discount,
            display_name=args.display_name,
            **prices,
        )

    try:
        result = with_db(config, work)
    except catalog.PriceError as exc:
        return fail(str(exc))
    verb = "added" if result["created"] else "updated"
    print(f"{verb} {args.model}")
    return 0


def run_price_alias(args: argparse.Namespace, config: Config) -> int:
    async def work(conn: asyncpg.Connection, redis: Redis) -> None:
        await catalog.set_alias(conn, args.alias, args.target)

    try:
        with_db(config, work)
    except catalog.PriceError as exc:
        return fail(str(exc))
    print(f"{args.alias} -> {args.target}")
    return 0


def run_topup(args: argparse.Namespace, config: Config) -> int:
    try:
        amount = parse_usd(args.usd)
    except ValueError as exc:
        return fail(str(exc))

    async def work(conn: asyncpg.Connection, redis: Redis) -> dict[str, Any]:
        await ledger.topup(conn, args.email, amount, args.note)
        return await ledger.account_summary(conn, args.email)

    try:
        summary = with_db(config, work)
    except ledger.LedgerError as exc:
        return fail(str(exc))
    emit(summary, args.json, f"{summary['email']}: balance ${summary['balance_usd']}")
    return 0


def run_account_show(args: argparse.Namespace, config: Config) -> int:
    async def work(conn: asyncpg.Connection, redis: Redis) -> dict[str, Any]:
        return await ledger.account_summary(conn, args.email)

    try:
        summary = with_db(config, work)
    except ledger.LedgerError as exc:
        return fail(str(exc))
    text = "\n".join(f"{key}: {value}" for key, value in summary.items())
    emit(summary, args.json, text)
    return 0


def run_audit(args: argparse.Namespace, config: Config) -> int:
    async def work(conn: asyncpg.Connection, redis: Redis) -> list[ledger.AuditDifference]:
        return await ledger.audit(conn)

    differences = [d.as_dict() for d in with_db(config, work)]
    lines = [
        f"account {d['account_id']} ({d['email']}): balance {d['balance_usd']} vs ledger "
        f"{d['ledger_usd']} (difference {d['balance_difference_usd']}); held {d['held_usd']}"
        f" vs open holds {d['open_holds_usd']}"
        for d in differences
    ]
    emit(
        {"ok": not differences, "differences": differences},
        args.json,
        "\n".join(lines) or "ok: every balance equals top-ups minus charges",
    )
    return 1 if differences else 0
