"""The operator's view of the credential pool and its switches, shared by
``alicode-gw upstream list|enable|disable`` and the /admin pages: every credential with
its live state from Redis (healthy, cooling, half-open, disabled), masked, and enabling
or disabling one on every node. A credential's secret never leaves this module except
masked (:func:`~alicode_gw.upstream.credentials.mask_secret`)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from alicode_gw.store.unavailable import REDIS_FAILED
from alicode_gw.upstream import health as pool_health
from alicode_gw.upstream.credentials import mask_secret

log = logging.getLogger(__name__)

_COLUMNS = "id, name, secret, weight, cache_group, status, disabled_reason, created_at"


@dataclass(frozen=True, slots=True)
class CredentialState:
    """One credential as an operator sees it (``key`` is masked)."""

    id: int
    name: str
    key: str
    weight: int
    cache_group: str | None  # None: a group of its own (docs/routing.md)
    status: str
    disabled_reason: str | None
    created_at: dt.datetime
    health: str  # healthy | cooling N.Ns | half-open | disabled
    cooling_ms: int  # > 0 while it cools down
    failures: int  # the current streak of failures (0 once a probe succeeded)


async def live_states(
    conn: asyncpg.Connection | asyncpg.Pool, redis: Redis, prefix: str
) -> list[CredentialState]:
    """Every credential with its live health (one pipelined Redis read)."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM upstream_credentials ORDER BY id")
    pipe = redis.pipeline(transaction=False)
    for row in rows:
        cool, trip, _ = pool_health.health_keys(prefix, row["id"])
        pipe.pttl(cool)
        pipe.get(trip)
    replies = await pipe.execute() if rows else []
    states = []
    for i, row in enumerate(rows):
        ttl, trip = replies[2 * i], replies[2 * i + 1]
        if row["status"] == "disabled":
            health = "disabled"
        elif ttl > 0:
            health = f"cooling {ttl / 1000:.1f}s"
        elif trip is not None:
            health = "half-open"
        else:
            health = "healthy"
        states.append(
            CredentialState(
                id=row["id"],
                name=row["name"],
                key=mask_secret(row["secret"]),
                weight=row["weight"],
                cache_group=row["cache_group"],
                status=row["status"],
                disabled_reason=row["disabled_reason"],
                created_at=row["created_at"],
                health=health,
                cooling_ms=max(int(ttl), 0),
                failures=int(trip or 0),
            )
        )
    return states


async def find(conn: asyncpg.Connection | asyncpg.Pool, ref: str) -> asyncpg.Record | None:
    """A credential by name, or by id when ``ref`` is a number."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM upstream_credentials WHERE name = $1", ref)
    if row is None and ref.isdigit():
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM upstream_credentials WHERE id = $1", int(ref)
        )
    return row


_ENABLE = (
    "UPDATE upstream_credentials SET status = 'active', disabled_reason = NULL,"
    " disabled_at = NULL, updated_at = now() WHERE id = $1"
)
_DISABLE = (
    "UPDATE upstream_credentials SET status = 'disabled', disabled_reason = $2,"
    " disabled_at = coalesce(disabled_at, now()), updated_at = now() WHERE id = $1"
)
_REMOVE = "DELETE FROM upstream_credentials WHERE id = $1"


async def announce(redis: Redis, prefix: str) -> None:
    """Every node re-reads the table now (else within seconds)."""
    try:
        await pool_health.announce_reload(redis, prefix)
    except REDIS_FAILED as exc:
        log.warning("running nodes will notice within seconds (Redis: %s)", exc)


async def change(
    conn: asyncpg.Connection | asyncpg.Pool,
    redis: Redis,
    prefix: str,
    ref: str,
    action: str,
    reason: str = "disabled by the operator",
) -> asyncpg.Record | None:
    """``enable``, ``disable`` or ``remove`` the credential ``ref`` (name or id): the
    table changed, its health cleared, every node told. ``None``: no such credential."""
    row = await find(conn, ref)
    if row is None:
        return None
    if action == "enable":
        await conn.execute(_ENABLE, row["id"])
    elif action == "disable":
        await conn.execute(_DISABLE, row["id"], reason)
    elif action == "remove":
        await conn.execute(_REMOVE, row["id"])
    else:
        raise ValueError(f"unknown action {action!r}")
    try:
        await pool_health.clear_health(redis, prefix, row["id"])
    except REDIS_FAILED as exc:
        log.warning("cannot clear the cooldown in Redis: %s", exc)
    await announce(redis, prefix)
    return row
