"""``upstream add|list|remove|enable|disable``: the pool of upstream (Anthropic) keys.

Keys are printed masked (``sk-ant-…abcd``), never in full. Every change is announced
on Redis so running nodes re-read the table at once (else within a few seconds).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alicode_gw.cli.common import emit, fail, with_db
from alicode_gw.config import Config
from alicode_gw.store.unavailable import REDIS_FAILED
from alicode_gw.upstream import credentials as creds
from alicode_gw.upstream import health as pool_health

log = logging.getLogger(__name__)

_COLUMNS = "id, name, secret, weight, cache_group, status, disabled_reason, created_at"


def _weight(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 < value <= creds.MAX_WEIGHT:
        raise argparse.ArgumentTypeError(f"must be 1-{creds.MAX_WEIGHT}, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("upstream", help="the pool of upstream Anthropic credentials")
    actions = group.add_subparsers(dest="upstream_action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="add an upstream API key to the pool")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--key", help="the Anthropic API key (see also --key-stdin)")
    source.add_argument(
        "--key-stdin",
        action="store_true",
        help="read the key from the first line of standard input (keeps it out of `ps`)",
    )
    add.add_argument("--name", help="a unique name (default: key- and its last 4 characters)")
    add.add_argument("--weight", type=_weight, default=1, help="share of the load (1-1000)")
    add.add_argument(
        "--cache-group",
        metavar="NAME",
        help="the organization or workspace of the key: credentials of one group share the "
        "upstream's prompt cache (default: a group of its own; see docs/routing.md)",
    )
    add.add_argument("--json", action="store_true", help="machine-readable output")
    add.set_defaults(handler=run_add)

    listing = actions.add_parser("list", help="list the pool (keys masked) with live health")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=run_list)

    for action, text, handler in (
        ("remove", "delete a credential from the pool", run_remove),
        ("enable", "re-enable a disabled credential and clear its cooldown", run_enable),
        ("disable", "take a credential out of service until `enable`", run_disable),
    ):
        command = actions.add_parser(action, help=text)
        command.add_argument("ref", metavar="NAME_OR_ID")
        if action == "disable":
            command.add_argument("--reason", default="disabled by the operator")
        command.add_argument("--json", action="store_true", help="machine-readable output")
        command.set_defaults(handler=handler)


def _row_dict(row: asyncpg.Record, health: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row["id"],
        "name": row["name"],
        "key": creds.mask_secret(row["secret"]),
        "weight": row["weight"],
        "cache_group": row["cache_group"],
        "status": row["status"],
        "disabled_reason": row["disabled_reason"],
        "created_at": row["created_at"].isoformat(),
    }
    if health is not None:
        data["health"] = health
    return data


async def _announce(redis: Redis, config: Config) -> None:
    try:
        await pool_health.announce_reload(redis, config.redis_prefix)
    except REDIS_FAILED as exc:
        log.warning("running nodes will notice within seconds (Redis: %s)", exc)


async def _find(conn: asyncpg.Connection, ref: str) -> asyncpg.Record | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM upstream_credentials WHERE name = $1", ref)
    if row is None and ref.isdigit():
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM upstream_credentials WHERE id = $1", int(ref)
        )
    return row


def run_add(args: argparse.Namespace, config: Config) -> int:
    secret = sys.stdin.readline().strip() if args.key_stdin else args.key

    async def work(conn: asyncpg.Connection, redis: Redis) -> creds.Credential:
        cred = await creds.add_credential(
            conn, secret, name=args.name, weight=args.weight, cache_group=args.cache_group
        )
        await _announce(redis, config)
        return cred

    try:
        cred = with_db(config, work)
    except creds.PoolError as exc:
        return fail(str(exc))
    group = f", cache group {cred.cache_group}" if cred.cache_group else ""
    emit(
        {
            "id": cred.id,
            "name": cred.name,
            "key": cred.display,
            "weight": cred.weight,
            "cache_group": cred.cache_group,
        },
        args.json,
        f"added {cred.name} ({cred.display}, weight {cred.weight}{group})",
    )
    return 0


def run_list(args: argparse.Namespace, config: Config) -> int:
    async def work(conn: asyncpg.Connection, redis: Redis) -> list[dict[str, Any]]:
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM upstream_credentials ORDER BY id")
        pipe = redis.pipeline(transaction=False)
        for row in rows:
            cool, trip, _ = pool_health.health_keys(config.redis_prefix, row["id"])
            pipe.pttl(cool)
            pipe.exists(trip)
        replies = await pipe.execute() if rows else []
        result = []
        for i, row in enumerate(rows):
            ttl, tripped = replies[2 * i], replies[2 * i + 1]
            if row["status"] == "disabled":
                health = "disabled"
            elif ttl > 0:
                health = f"cooling {ttl / 1000:.1f}s"
            elif tripped:
                health = "half-open"
            else:
                health = "healthy"
            result.append(_row_dict(row, health))
        return result

    rows = with_db(config, work)
    lines = [f"{'ID':>4}  {'NAME':<20} {'KEY':<16} {'WEIGHT':>6}  {'CACHE GROUP':<16} HEALTH"]
    for row in rows:
        health = row["health"]
        if row["disabled_reason"]:
            health += f" ({row['disabled_reason']})"
        lines.append(
            f"{row['id']:>4}  {row['name']:<20} {row['key']:<16} {row['weight']:>6}  "
            f"{row['cache_group'] or '-':<16} {health}"
        )
    emit(rows, args.json, "\n".join(lines) if rows else "the upstream pool is empty")
    return 0


def _change(args: argparse.Namespace, config: Config, sql: str, *params: Any) -> int:
    """Find NAME_OR_ID, run ``sql`` with its id as $1, clear its health, announce."""

    async def work(conn: asyncpg.Connection, redis: Redis) -> asyncpg.Record | None:
        row = await _find(conn, args.ref)
        if row is None:
            return None
        await conn.execute(sql, row["id"], *params)
        try:
            await pool_health.clear_health(redis, config.redis_prefix, row["id"])
        except REDIS_FAILED as exc:
            log.warning("cannot clear the cooldown in Redis: %s", exc)
        await _announce(redis, config)
        return row

    row = with_db(config, work)
    if row is None:
        return fail(f"no upstream credential named or numbered {args.ref!r}")
    emit(
        {
            "id": row["id"],
            "name": row["name"],
            "key": creds.mask_secret(row["secret"]),
        },
        args.json,
        f"{args.upstream_action}d {row['name']} ({creds.mask_secret(row['secret'])})",
    )
    return 0


def run_remove(args: argparse.Namespace, config: Config) -> int:
    return _change(args, config, "DELETE FROM upstream_credentials WHERE id = $1")


def run_enable(args: argparse.Namespace, config: Config) -> int:
    return _change(
        args,
        config,
        "UPDATE upstream_credentials SET status = 'active', disabled_reason = NULL,"
        " disabled_at = NULL, updated_at = now() WHERE id = $1",
    )


def run_disable(args: argparse.Namespace, config: Config) -> int:
    return _change(
        args,
        config,
        "UPDATE upstream_credentials SET status = 'disabled', disabled_reason = $2,"
        " disabled_at = coalesce(disabled_at, now()), updated_at = now() WHERE id = $1",
        args.reason,
    )
