"""``GET /v1/health``: no key, no secrets; cheap enough to poll every second.

The live checks (PostgreSQL ``SELECT 1``, Redis ``PING``, each with its latency) run
at most once per :data:`CHECK_TTL` per process, shared by concurrent polls; the rest
comes from memory (the credential pool, the upstream outcomes of the last minute).

Status:

* ``down`` (HTTP 503) — this process cannot serve: it is draining, PostgreSQL does not
  answer, or no upstream credential is enabled (none configured, or all disabled).
* ``degraded`` (200) — it serves, impaired: Redis does not answer (limits fail closed),
  some credential is cooling or disabled, or at least half of the last minute's
  upstream attempts (10 or more) failed.
* ``ok`` (200) otherwise. ``reasons`` names what is not ok.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from alicode_gw import __version__
from alicode_gw.observe.metrics import RECENT_WINDOW
from alicode_gw.state import RequestContext, State

CHECK_TIMEOUT = 1.0
CHECK_TTL = 1.0
ERROR_RATE_DEGRADED = 0.5
ERROR_RATE_MIN_ATTEMPTS = 10


async def _timed(check: Awaitable[Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check, CHECK_TIMEOUT)
    except Exception as exc:  # a failed check is data here, not an error
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


class HealthMonitor:
    """The cached live checks of one process (``state.health``)."""

    def __init__(self, ttl: float = CHECK_TTL) -> None:
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._checked_at = -float("inf")
        self._checks: tuple[dict[str, Any], dict[str, Any]] = ({}, {})

    async def checks(self, state: State) -> tuple[dict[str, Any], dict[str, Any]]:
        """(database, redis) results, at most ``ttl`` seconds old."""
        async with self._lock:
            if time.monotonic() - self._checked_at >= self._ttl:
                database, redis = await asyncio.gather(
                    _timed(state.db.fetchval("SELECT 1")), _timed(state.redis.ping())
                )
                self._checks = (database, redis)
                self._checked_at = time.monotonic()
            return self._checks

    def invalidate(self) -> None:
        """Make the next poll run the live checks again."""
        self._checked_at = -float("inf")


def _upstream(state: State) -> dict[str, Any]:
    counts = {"healthy": 0, "cooling": 0, "disabled": 0}
    for row in state.keypool.snapshot():
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    attempts, errors = state.metrics.recent_upstream()
    return {
        "healthy": counts["healthy"],
        "total": sum(counts.values()),
        "cooling": counts["cooling"],
        "disabled": counts["disabled"],
        "recent": {
            "window_seconds": RECENT_WINDOW,
            "attempts": attempts,
            "errors": errors,
            "error_rate": round(errors / attempts, 3) if attempts else 0.0,
        },
    }


async def collect(state: State) -> tuple[int, dict[str, Any]]:
    """Run (or reuse) the live checks; (HTTP status, report)."""
    database, redis = await state.health.checks(state)
    upstream = _upstream(state)
    down: list[str] = []
    degraded: list[str] = []
    if state.draining:
        down.append("draining")
    if not database["ok"]:
        down.append("database unreachable")
    if upstream["total"] - upstream["disabled"] == 0:
        down.append("no enabled upstream credential")
    if not redis["ok"]:
        degraded.append("redis unreachable")
    if upstream["healthy"] < upstream["total"]:
        degraded.append("some upstream credentials are not healthy")
    recent = upstream["recent"]
    if (
        recent["attempts"] >= ERROR_RATE_MIN_ATTEMPTS
        and recent["error_rate"] >= ERROR_RATE_DEGRADED
    ):
        degraded.append("high upstream error rate")
    status = "down" if down else "degraded" if degraded else "ok"
    report = {
        "status": status,
        "reasons": down + degraded,
        "version": __version__,
        "uptime_seconds": round(time.time() - state.started_at, 1),
        "in_flight": state.in_flight,
        "database": database,
        "redis": redis,
        "upstream": upstream,
    }
    return (503 if down else 200), report


async def handle_health(ctx: RequestContext) -> web.StreamResponse:
    status, report = await collect(ctx.state)
    return web.Response(
        status=status,
        body=json.dumps(report).encode(),
        content_type="application/json",
        headers=ctx.headers(**{"cache-control": "no-store"}),
    )
