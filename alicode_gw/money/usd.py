"""Money as the gateway shows and reads it: integer nano-USD to exact decimal strings
and back (never a float, never rounded)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

NANOS_PER_USD = 1_000_000_000


def format_usd(nanos: int) -> str:
    """Integer nano-USD -> exact decimal string, at least two decimals ("12.50",
    "0.039", "0.000000001")."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    digits = f"{frac:09d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"


def parse_usd(text: str) -> int:
    """Decimal USD string -> integer nano-USD, exactly; more precision than a nano is
    refused (ValueError), never rounded."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"expected an amount in USD, got {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"expected an amount in USD, got {text!r}")
    nanos = value * NANOS_PER_USD
    if nanos != nanos.to_integral_value():
        raise ValueError(f"{text!r} has more than 9 decimal places (1 nano-USD)")
    return int(nanos)
