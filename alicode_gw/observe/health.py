"""The live checks behind ``GET /v1/health`` (PostgreSQL ``SELECT 1``, Redis ``PING``,
each with its latency): run at most once per :data:`CHECK_TTL` per process, shared by
concurrent polls. The report and its status are :mod:`alicode_gw.endpoints.health`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import asyncpg
from redis.asyncio import Redis

CHECK_TIMEOUT = 1.0
CHECK_TTL = 1.0


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

    async def checks(self, db: asyncpg.Pool, redis: Redis) -> tuple[dict[str, Any], dict[str, Any]]:
        """(database, redis) results, at most ``ttl`` seconds old."""
        async with self._lock:
            if time.monotonic() - self._checked_at >= self._ttl:
                database, redis = await asyncio.gather(
                    _timed(db.fetchval("SELECT 1")), _timed(redis.ping())
                )
                self._checks = (database, redis)
                self._checked_at = time.monotonic()
            return self._checks

    def invalidate(self) -> None:
        """Make the next poll run the live checks again."""
        self._checked_at = -float("inf")
