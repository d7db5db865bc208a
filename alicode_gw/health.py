"""``GET /v1/health``: live checks of the database and Redis, no key, no secrets."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from alicode_gw import __version__
from alicode_gw.state import RequestContext, State

CHECK_TIMEOUT = 1.0


async def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check, CHECK_TIMEOUT)
    except Exception as exc:  # a failed check is data here, not an error
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


async def collect(state: State) -> tuple[int, dict[str, Any]]:
    """Run the live checks; (HTTP status, report)."""
    database, redis = await asyncio.gather(
        _timed(state.db.fetchval("SELECT 1")), _timed(state.redis.ping())
    )
    if state.draining or not database["ok"]:
        status = "down"
    elif not redis["ok"]:
        status = "degraded"
    else:
        status = "ok"
    report = {
        "status": status,
        "version": __version__,
        "uptime_seconds": round(time.time() - state.started_at, 1),
        "in_flight": state.in_flight,
        "database": database,
        "redis": redis,
    }
    return (503 if status == "down" else 200), report


async def handle_health(ctx: RequestContext) -> web.StreamResponse:
    status, report = await collect(ctx.state)
    return web.Response(
        status=status,
        body=json.dumps(report).encode(),
        content_type="application/json",
        headers=ctx.headers(**{"cache-control": "no-store"}),
    )
