"""What an upstream answer says about the credential that got it.

:func:`classify` is pure: it maps a status (None: the connection failed or timed
out), the headers and the body of an upstream response to an :class:`Outcome` and,
for a 429, how long the credential should rest. :mod:`alicode_gw.upstream.pool` applies it.

A rule that takes a credential out of the pool (AUTH_FAILED, BILLING_FAILED) looks at
what only the upstream decides: the status, the error type, and a message compared
whole against the upstream's own wording. Never a substring: the upstream echoes
parts of the request in its messages (an unknown content-block type, a bad field
value), so a client could otherwise make it say any words it likes.
"""

from __future__ import annotations

import email.utils
import enum
import json
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime

RATE_LIMIT_COOLDOWN_CAP = 300.0  # longest cooldown a 429's reset time may impose
# Anthropic answers a credential whose organisation is out of prepaid credit with a
# 400 invalid_request_error carrying exactly this message.
CREDIT_BALANCE_MESSAGE = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)
_BILLING_MESSAGES = frozenset({CREDIT_BALANCE_MESSAGE})
# ...and one whose organisation (or workspace) reached the spend limit it set, with
# the date access returns (the first of next month):
# "You have reached your specified API usage limits. You will regain access on
# 2026-04-01 at 00:00 UTC."
USAGE_LIMIT_MESSAGE = re.compile(
    r"You have reached your specified API usage limits\. "
    r"You will regain access on [0-9]{4}-[0-9]{2}-[0-9]{2} at [0-9]{2}:[0-9]{2} UTC\."
)


class Outcome(enum.Enum):
    """What an upstream attempt says about the credential it used."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    CONNECT_ERROR = "connect_error"
    AUTH_FAILED = "auth_failed"
    BILLING_FAILED = "billing_failed"
    CLIENT_ERROR = "client_error"


def classify(
    status: int | None,
    headers: Mapping[str, str] | None,
    body: bytes | None,
    *,
    now: float | None = None,
) -> tuple[Outcome, float | None]:
    """Map an upstream answer to an :class:`Outcome` and a cooldown hint (seconds).

    ``status`` None means the connection failed or timed out. Only a 429 carries a
    hint: ``retry-after`` (seconds or an HTTP date), else the latest reset time of the
    exhausted ``anthropic-ratelimit-*`` limits, capped at ``RATE_LIMIT_COOLDOWN_CAP``.
    ``now`` (epoch seconds) is for tests; it defaults to the clock.
    """
    if status is None:
        return Outcome.CONNECT_ERROR, None
    if 200 <= status < 300:
        return Outcome.OK, None
    if status == 429:
        return Outcome.RATE_LIMITED, _rate_limit_wait(headers, time.time() if now is None else now)
    if status == 529:
        return Outcome.OVERLOADED, None
    if status >= 500:
        if _error_of(body)[0] == "overloaded_error":
            return Outcome.OVERLOADED, None
        return Outcome.SERVER_ERROR, None
    if status == 401:
        return Outcome.AUTH_FAILED, None
    # A 403 permission_error can depend on the request (e.g. an anthropic-beta feature
    # the operator's organisation lacks): a client's request must never be able to take
    # credentials out of the pool, so it passes through and cools nothing.
    if 400 <= status < 500:
        if status == 402:
            return Outcome.BILLING_FAILED, None
        error_type, message = _error_of(body)
        if error_type == "billing_error" or (
            status == 400
            and error_type == "invalid_request_error"
            and (
                message.strip() in _BILLING_MESSAGES
                or USAGE_LIMIT_MESSAGE.fullmatch(message.strip()) is not None
            )
        ):
            return Outcome.BILLING_FAILED, None
        return Outcome.CLIENT_ERROR, None
    return Outcome.SERVER_ERROR, None  # 1xx/3xx: not an answer the API gives


def _error_of(body: bytes | None) -> tuple[str, str]:
    """(error.type, error.message) of an Anthropic error body, or empty strings."""
    if not body:
        return "", ""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return "", ""
    if not isinstance(error, dict):
        return "", ""
    kind, message = error.get("type"), error.get("message")
    return (kind if isinstance(kind, str) else ""), (message if isinstance(message, str) else "")


def _rate_limit_wait(headers: Mapping[str, str] | None, now: float) -> float | None:
    if not headers:
        return None
    lower = {key.lower(): value for key, value in headers.items()}
    wait = _retry_after(lower.get("retry-after"), now)
    if wait is None:
        exhausted: list[float] = []
        others: list[float] = []
        for key, value in lower.items():
            if not (key.startswith("anthropic-ratelimit-") and key.endswith("-reset")):
                continue
            when = _parse_rfc3339(value)
            if when is None:
                continue
            remaining = lower.get(key[: -len("reset")] + "remaining", "").strip()
            (exhausted if remaining == "0" else others).append(when - now)
        candidates = exhausted or others
        if candidates:
            wait = max(candidates)
    if wait is None or math.isnan(wait):
        return None
    return min(max(wait, 0.0), RATE_LIMIT_COOLDOWN_CAP)


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - now


def _parse_rfc3339(value: str) -> float | None:
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
