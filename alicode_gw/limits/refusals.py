"""The limiter's refusals: a 429 ``rate_limit_error`` with its message and headers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from alicode_gw.errors import RateLimitError

_REJECTIONS = {
    1: "Too many requests from this IP address: the limit is {limit} per minute. Retry in {retry}.",
    2: "Too many concurrent requests from this IP address (limit {limit}). "
    "Retry when one finishes.",
    3: "Rate limit exceeded for this API key: {limit} requests per minute. Retry in {retry}.",
    4: "Too many concurrent requests for this API key (limit {limit}). Retry when one finishes.",
    5: "Token budget exceeded for this API key ({limit} tokens per 5h rolling window). "
    "Resets in {retry}.",
    6: "Token budget for this API key ({limit} tokens per 5h rolling window) is taken, "
    "counting the worst case of its requests in flight. Retry when one finishes.",
}


# Rejection code -> the limit's name (the alicode_limit_rejections_total label).
_LIMIT_NAMES = {
    1: "ip_rpm",
    2: "ip_concurrency",
    3: "key_rpm",
    4: "key_concurrency",
    5: "key_budget",
    6: "key_budget",
}


def format_duration(seconds: float) -> str:
    """``8100`` -> ``"2h 15m"``; under a minute, ``"42s"``."""
    total = max(0, math.ceil(seconds))
    if total < 60:
        return f"{total}s"
    hours, rest = divmod(total, 3600)
    minutes = math.ceil(rest / 60) if hours == 0 else rest // 60
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


def rejection(result: Sequence[Any]) -> tuple[int, RateLimitError]:
    """ADMIT's refusal ``{0, code, limit, reset_ms, retry_ms}`` as the index of the
    limit that refused (0-3: IP per minute, IP concurrency, key per minute, key
    concurrency; 4: the key's budget, counted or reserved) and the 429 the client gets."""
    _, code, limit, reset_ms, retry_ms = (int(v) for v in result)
    retry = max(1, math.ceil(retry_ms / 1000))
    message = _REJECTIONS[code].format(limit=limit, retry=format_duration(retry))
    err = RateLimitError(
        message,
        headers={
            "Retry-After": str(retry),
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(math.ceil(reset_ms / 1000)),
        },
    )
    err.limit = _LIMIT_NAMES.get(code, "other")
    return min(code, 5) - 1, err
