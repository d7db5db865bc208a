"""``GET /v1/health``: no key, no secrets; cheap enough to poll every second.

The live checks (:mod:`alicode_gw.observe.health`) run at most once a second per
process, shared by concurrent polls; the rest comes from memory (the credential pool,
the upstream outcomes of the last minute).

Status:

* ``down`` (HTTP 503) — this process cannot serve: it is draining, PostgreSQL does not
  answer, or no upstream credential is enabled (none configured, or all disabled).
* ``degraded`` (200) — it serves, impaired: Redis does not answer (limits fail closed),
  some credential is cooling or disabled, or at least half of the last minute's
  upstream attempts (10 or more) failed.
* ``ok`` (200) otherwise. ``reasons`` names what is not ok.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from alicode_gw import __version__
from alicode_gw.observe.metrics import RECENT_WINDOW
from alicode_gw.state import RequestContext, State

ERROR_RATE_DEGRADED = 0.5
ERROR_RATE_MIN_ATTEMPTS = 10


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
    database, redis = await state.health.checks(state.db, state.redis)
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
    if time.monotonic() < state.shed_until:
        degraded.append("shedding load: requests in flight at max_in_flight")
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


ROOT_BODY = b'{"service":"alicode_gw","status":"ok"}'


async def handle_root(ctx: RequestContext) -> web.StreamResponse:
    """``GET /`` and ``HEAD /``: what a connectivity probe expects (a 200 naming the
    service); no key, no version, no host detail."""
    return web.Response(body=ROOT_BODY, content_type="application/json", headers=ctx.headers())
