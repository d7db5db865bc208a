"""The dashboard's database calls. Every query is a function in
``sql/functions/dashboard.sql``, called with named arguments
(``dashboard.usage_by(p_account_id => $1, ...)``), so Python never depends on an
argument's position."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

Connection = asyncpg.Connection | asyncpg.Pool

USAGE_DIMENSIONS = ("day", "key", "model", "ip")


def _call(function: str, args: dict[str, Any]) -> tuple[str, list[Any]]:
    named = ", ".join(f"p_{name} => ${n}" for n, name in enumerate(args, start=1))
    return f"dashboard.{function}({named})", list(args.values())


async def rows(conn: Connection, function: str, **args: Any) -> list[asyncpg.Record]:
    call, values = _call(function, args)
    return await conn.fetch(f"SELECT * FROM {call}", *values)


async def value(conn: Connection, function: str, **args: Any) -> Any:
    call, values = _call(function, args)
    return await conn.fetchval(f"SELECT {call}", *values)


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in account of a page request."""

    account_id: int
    email: str
    status: str
    is_operator: bool
    balance_nanos: int
    held_nanos: int
    session_token: str


async def viewer(conn: Connection, token: str, token_hash: bytes) -> Viewer | None:
    found = await rows(conn, "session_account", token_hash=token_hash)
    if not found:
        return None
    r = found[0]
    return Viewer(
        account_id=r["account_id"],
        email=r["email"],
        status=r["status"],
        is_operator=r["is_operator"],
        balance_nanos=r["balance_nanos"],
        held_nanos=r["held_nanos"],
        session_token=token,
    )


@dataclass(frozen=True, slots=True)
class UsageRow:
    dimension: str  # day | key | model | ip
    label: str | None  # the day, key id, model or client IP (None: not recorded)
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read: int
    cache_write: int
    cost_nanos: int
    charged_nanos: int


async def usage(
    conn: Connection, account_id: int, first: dt.date, last: dt.date, by: tuple[str, ...]
) -> dict[str, list[UsageRow]]:
    """The account's usage from ``first`` to ``last`` (UTC days) summed by each
    dimension in ``by`` (one scan for all). Closed days are rolled up first (a no-op
    once done for the day)."""
    unknown = set(by) - set(USAGE_DIMENSIONS)
    if unknown:
        raise ValueError(f"unknown usage dimension(s): {sorted(unknown)}")
    await value(conn, "roll_up", account_id=account_id)
    found = await rows(conn, "usage_by", account_id=account_id, first=first, last=last, by=list(by))
    tables: dict[str, list[UsageRow]] = {dimension: [] for dimension in by}
    for r in found:
        tables[r["dimension"]].append(UsageRow(*r.values()))
    return tables


@dataclass(frozen=True, slots=True)
class LedgerRow:
    id: int
    created_at: dt.datetime
    kind: str
    amount_nanos: int
    key_id: int | None
    client_ip: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read: int | None
    cache_write: int | None
    batch: bool | None
    cost_nanos: int | None
    status: str
    note: str | None


async def ledger_page(
    conn: Connection, account_id: int, before_id: int | None, limit: int, topups_only: bool
) -> list[LedgerRow]:
    found = await rows(
        conn,
        "ledger_page",
        account_id=account_id,
        before_id=before_id,
        limit=limit,
        topups_only=topups_only,
    )
    return [LedgerRow(*r.values()) for r in found]
