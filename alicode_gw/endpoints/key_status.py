"""``GET /v1/key-status``: the calling key's limits and live usage (ClaudCode's shape).

``budget.resets_in`` is when the budget admits requests again if it is exhausted,
otherwise when the oldest usage still counted leaves the 5-hour window (``null`` when
nothing is counted). ``*_seconds`` twins carry the same durations as numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from alicode_gw.identity import accounts
from alicode_gw.limits.refusals import format_duration
from alicode_gw.money.usd import format_usd
from alicode_gw.state import RequestContext
from alicode_gw.store.unavailable import DATABASE_FAILED, unavailable


def _duration(seconds: float | None) -> tuple[str | None, int | None]:
    if seconds is None:
        return None, None
    return format_duration(seconds), max(0, math.ceil(seconds))


async def handle_key_status(ctx: RequestContext) -> web.StreamResponse:
    state = ctx.state
    key = ctx.authenticated
    usage = await state.limiter.usage(key)
    with unavailable("The key store is temporarily unavailable.", DATABASE_FAILED):
        record = await accounts.get_key(state.db, key.id)
    spent = record.spent_nanos if record is not None else 0
    status = record.status if record is not None else "active"

    total = key.budget_tokens
    exhausted = total is not None and usage.used_tokens >= total
    resets = usage.budget_resets_in if exhausted else usage.oldest_expires_in
    resets_in, resets_in_seconds = _duration(resets)
    report: dict[str, Any] = {
        "key": key.masked,
        "name": key.name,
        "status": status,
        "budget": {
            "total_tokens": total,
            "used_tokens": usage.used_tokens,
            "remaining_tokens": None if total is None else max(0, total - usage.used_tokens),
            "window": "5h rolling",
            "resets_in": resets_in,
            "resets_in_seconds": resets_in_seconds,
        },
        "rate_limit": {"rpm": key.rpm_limit, "concurrent": key.concurrency_limit},
        # Requests are counted per key only against a limit: null, not 0, without one.
        "usage": {
            "requests_last_minute": usage.requests_last_minute if key.rpm_limit else None,
            "in_flight": usage.in_flight if key.concurrency_limit else None,
        },
        "spend": {
            "cap_usd": None if key.spend_cap_nanos is None else format_usd(key.spend_cap_nanos),
            "spent_usd": format_usd(spent),
        },
        "allowed_models": None if key.allowed_models is None else sorted(key.allowed_models),
    }
    return web.Response(
        body=json.dumps(report).encode(),
        content_type="application/json",
        headers=ctx.headers(**{"cache-control": "no-store"}),
    )
