"""``upstream add|list|remove|enable|disable``: the pool of upstream (Anthropic) keys.

Keys are printed masked (``sk-ant-…abcd``), never in full. Every change is announced
on Redis so running nodes re-read the table at once (else within a few seconds).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alicode_gw.cli.common import emit, fail, with_db
from alicode_gw.config import Config
from alicode_gw.upstream import credentials as creds
from alicode_gw.upstream import operator


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


def run_add(args: argparse.Namespace, config: Config) -> int:
    secret = sys.stdin.readline().strip() if args.key_stdin else args.key

    async def work(conn: asyncpg.Connection, redis: Redis) -> creds.Credential:
        cred = await creds.add_credential(
            conn, secret, name=args.name, weight=args.weight, cache_group=args.cache_group
        )
        await operator.announce(redis, config.redis_prefix)
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
        states = await operator.live_states(conn, redis, config.redis_prefix)
        return [
            {
                "id": st.id,
                "name": st.name,
                "key": st.key,
                "weight": st.weight,
                "cache_group": st.cache_group,
                "status": st.status,
                "disabled_reason": st.disabled_reason,
                "created_at": st.created_at.isoformat(),
                "health": st.health,
            }
            for st in states
        ]

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


def _change(args: argparse.Namespace, config: Config, **reason: str) -> int:
    """Find NAME_OR_ID and enable, disable or remove it (:func:`operator.change`)."""

    async def work(conn: asyncpg.Connection, redis: Redis) -> asyncpg.Record | None:
        return await operator.change(
            conn, redis, config.redis_prefix, args.ref, args.upstream_action, **reason
        )

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
    return _change(args, config)


def run_enable(args: argparse.Namespace, config: Config) -> int:
    return _change(args, config)


def run_disable(args: argparse.Namespace, config: Config) -> int:
    return _change(args, config, reason=args.reason)
