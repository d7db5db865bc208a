"""The ``message_batches`` table and the batch money functions (sql/functions/batches.sql):
every SQL statement of the batches package, with named parameters."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from alicode_gw.batches.objects import Batch
from alicode_gw.money.contract import Usage

Db = asyncpg.Pool | asyncpg.Connection

_COLUMNS = (
    "id, account_id, key_id, upstream_id, credential_id, status, settlement, request_count,"
    " succeeded, errored, canceled, expired, request_models, created_at, expires_at,"
    " ended_at, cancel_initiated_at, archived_at, polls"
)


def _batch(row: Mapping[str, Any]) -> Batch:
    values = {name.strip(): row[name.strip()] for name in _COLUMNS.split(",")}
    models = values["request_models"]
    values["request_models"] = json.loads(models) if isinstance(models, str) else dict(models)
    return Batch(**values)


def _named(function: str, arguments: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """``SELECT * FROM function(p_a => $1, ...)``: every argument named."""
    named = ", ".join(f"p_{name} => ${i}" for i, name in enumerate(arguments, 1))
    return f"SELECT * FROM {function}({named})", tuple(arguments.values())


@dataclass(frozen=True, slots=True)
class HoldItem:
    """One request's part of a batch's worst case."""

    custom_id: str
    model: str  # as the customer named it
    input: int  # estimated input tokens
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Opened:
    outcome: str  # held | duplicate | insufficient | over_cap | unknown_model | unknown_key
    hold_nanos: int


@dataclass(frozen=True, slots=True)
class Settled:
    outcome: str  # settled | already_settled | released | unknown
    charged_nanos: int
    revoked_public_id: str | None


@dataclass(frozen=True, slots=True)
class Counts:
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


async def open_batch(
    db: Db,
    *,
    batch_id: str,
    key_id: int,
    client_ip: str,
    items: Sequence[HoldItem],
    expires_at: datetime,
    hold_ttl_seconds: float,
) -> Opened:
    """Record the batch (``submitting``) and hold its worst case, in one transaction."""
    sql, args = _named(
        "billing.batch_open",
        {
            "batch_id": batch_id,
            "key_id": key_id,
            "client_ip": client_ip,
            "items": json.dumps([asdict(item) for item in items]),
            "expires_at": expires_at,
            "hold_ttl_seconds": hold_ttl_seconds,
        },
    )
    row = await db.fetchrow(sql, *args)
    assert row is not None
    return Opened(row["outcome"], row["hold_nanos"])


async def mark_submitted(
    db: Db, batch_id: str, *, upstream_id: str, credential_id: int, next_poll_seconds: float
) -> None:
    await db.execute(
        "UPDATE message_batches SET status = 'in_progress', upstream_id = $2,"
        " credential_id = $3, next_poll_at = now() + make_interval(secs => $4)"
        " WHERE id = $1 AND status = 'submitting'",
        batch_id,
        upstream_id,
        credential_id,
        next_poll_seconds,
    )


async def release(db: asyncpg.Pool, batch_id: str, *, hide: bool = False) -> str:
    """Nothing billed: the hold given back, the batch ended with every request errored
    (``hide``: and never listed, for a batch the upstream refused at creation)."""
    async with db.acquire() as conn, conn.transaction():
        outcome = await conn.fetchval("SELECT billing.batch_release(p_batch_id => $1)", batch_id)
        if hide:
            await conn.execute(
                "UPDATE message_batches SET deleted_at = now() WHERE id = $1", batch_id
            )
    return str(outcome)


async def get(db: Db, account_id: int, batch_id: str) -> Batch | None:
    """The account's batch (never another account's, never a deleted one)."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM message_batches"
        " WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL",
        batch_id,
        account_id,
    )
    return None if row is None else _batch(row)


async def get_any(db: Db, batch_id: str) -> Batch | None:
    """The batch, whatever its account or state (operator tools, tests)."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM message_batches WHERE id = $1", batch_id)
    return None if row is None else _batch(row)


async def page(
    db: Db, account_id: int, *, limit: int, before_id: str | None, after_id: str | None
) -> tuple[list[Batch], bool] | None:
    """One page, newest first: after ``after_id`` (older ones), before ``before_id``
    (newer ones), or the newest. None: the cursor is not one of the account's batches."""
    cursor_id = after_id or before_id
    if cursor_id is not None:
        cursor = await db.fetchrow(
            "SELECT created_at, id FROM message_batches"
            " WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL",
            cursor_id,
            account_id,
        )
        if cursor is None:
            return None
    if before_id is not None:
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM message_batches"
            " WHERE account_id = $1 AND deleted_at IS NULL AND (created_at, id) > ($2, $3)"
            " ORDER BY created_at, id LIMIT $4",
            account_id,
            cursor["created_at"],
            cursor["id"],
            limit + 1,
        )
        batches = [_batch(r) for r in rows[:limit]]
        return list(reversed(batches)), len(rows) > limit
    if after_id is not None:
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM message_batches"
            " WHERE account_id = $1 AND deleted_at IS NULL AND (created_at, id) < ($2, $3)"
            " ORDER BY created_at DESC, id DESC LIMIT $4",
            account_id,
            cursor["created_at"],
            cursor["id"],
            limit + 1,
        )
    else:
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM message_batches"
            " WHERE account_id = $1 AND deleted_at IS NULL"
            " ORDER BY created_at DESC, id DESC LIMIT $2",
            account_id,
            limit + 1,
        )
    return [_batch(r) for r in rows[:limit]], len(rows) > limit


async def mark_canceling(db: Db, batch_id: str) -> None:
    await db.execute(
        "UPDATE message_batches SET status = 'canceling',"
        " cancel_initiated_at = coalesce(cancel_initiated_at, now())"
        " WHERE id = $1 AND status = 'in_progress'",
        batch_id,
    )


async def mark_deleted(db: Db, batch_id: str) -> None:
    await db.execute(
        "UPDATE message_batches SET deleted_at = now() WHERE id = $1 AND status = 'ended'",
        batch_id,
    )


async def recheck_submitting(db: Db, batch_id: str, *, in_seconds: float) -> None:
    """The next look at a batch still being submitted; none when it has been recorded
    as submitted meanwhile (its next poll is then the one ``mark_submitted`` set)."""
    await db.execute(
        "UPDATE message_batches SET next_poll_at = now() + make_interval(secs => $2)"
        " WHERE id = $1 AND status = 'submitting'",
        batch_id,
        in_seconds,
    )


async def claim_due(db: Db, *, limit: int, lease_seconds: float) -> list[Batch]:
    """Open batches due for a poll, pushed back by ``lease_seconds`` for this process."""
    sql, args = _named("billing.batch_claim", {"limit": limit, "lease_seconds": lease_seconds})
    return [_batch(r) for r in await db.fetch(sql, *args)]


async def schedule(
    db: Db,
    batch_id: str,
    *,
    in_seconds: float,
    canceling: bool = False,
    counts: Counts | None = None,
) -> None:
    """The next poll of an open batch; ``canceling``: the upstream says it is;
    ``counts``: the upstream's progress so far."""
    done = counts or Counts()
    await db.execute(
        "UPDATE message_batches SET next_poll_at = now() + make_interval(secs => $2),"
        " status = CASE WHEN $3 AND status = 'in_progress' THEN 'canceling' ELSE status END,"
        " cancel_initiated_at = CASE WHEN $3 THEN coalesce(cancel_initiated_at, now())"
        " ELSE cancel_initiated_at END,"
        " succeeded = CASE WHEN $4 THEN $5 ELSE succeeded END,"
        " errored = CASE WHEN $4 THEN $6 ELSE errored END,"
        " canceled = CASE WHEN $4 THEN $7 ELSE canceled END,"
        " expired = CASE WHEN $4 THEN $8 ELSE expired END"
        " WHERE id = $1 AND settlement = 'open'",
        batch_id,
        in_seconds,
        canceling,
        counts is not None,
        done.succeeded,
        done.errored,
        done.canceled,
        done.expired,
    )


async def settle(
    db: Db,
    batch_id: str,
    *,
    usage: Mapping[str, Usage],
    counts: Counts,
    ended_at: datetime | None,
) -> Settled:
    """Bill the ended batch once (``usage``: succeeded requests' sums by priced model)."""
    sql, args = _named(
        "billing.batch_settle",
        {
            "batch_id": batch_id,
            "usage": json.dumps([{"model": m, **u.counts()} for m, u in sorted(usage.items())]),
            "succeeded": counts.succeeded,
            "errored": counts.errored,
            "canceled": counts.canceled,
            "expired": counts.expired,
            "ended_at": ended_at,
        },
    )
    row = await db.fetchrow(sql, *args)
    assert row is not None
    return Settled(row["outcome"], row["charged_nanos"], row["revoked_public_id"])


@dataclass(frozen=True, slots=True)
class OwnerCredential:
    id: int
    secret: str
    active: bool

    def __repr__(self) -> str:  # the secret never in a log line
        return f"OwnerCredential(id={self.id}, active={self.active})"


async def owner_credential(db: Db, credential_id: int) -> OwnerCredential | None:
    row = await db.fetchrow(
        "SELECT id, secret, status FROM upstream_credentials WHERE id = $1", credential_id
    )
    if row is None:
        return None
    return OwnerCredential(row["id"], row["secret"], row["status"] == "active")
