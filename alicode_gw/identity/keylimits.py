"""Parsing a key's limits as an operator or a customer types them: the CLI's
``key create`` flags and the dashboard's create-key form go through these same
functions (and then :func:`~alicode_gw.identity.accounts.create_key`, which checks them
again), so both accept and refuse exactly the same values.

Each parser takes the text as typed and returns the value ``create_key`` takes, or
raises :class:`ValueError` with a message fit to show (without the field's name).
"""

from __future__ import annotations

from alicode_gw.money.usd import parse_usd

MAX_LIMIT = 2**31 - 1  # the largest limit the table holds (rpm, concurrency: integer)
MAX_NANOS = 2**63 - 1  # the largest amount it holds (bigint nano-USD)


def positive_int(text: str) -> int:
    """A limit such as requests per minute: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    if value > MAX_LIMIT:
        raise ValueError(f"must be at most {MAX_LIMIT}, got {value}")
    return value


def spend_cap(text: str) -> int:
    """A spend cap in USD (exact, up to 9 decimals) as nano-USD, above zero."""
    cap = parse_usd(text)
    if cap <= 0:
        raise ValueError("must be positive")
    if cap > MAX_NANOS:
        raise ValueError("is too large")
    return cap


def allowed_models(text: str) -> list[str]:
    """A comma-separated list of model ids; at least one."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise ValueError("name at least one model (omit it to allow every model)")
    return models
