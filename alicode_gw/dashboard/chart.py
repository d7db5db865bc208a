"""The overview's spend-per-day chart as server-rendered SVG data (pure: no I/O).

:func:`spend_bars` turns (day, nano-USD) pairs into bar geometry; the template draws
them as ``<rect>`` elements with presentation attributes (no script, no inline style).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from alicode_gw.money.usd import format_usd

WIDTH = 600
HEIGHT = 160
TOP = 10  # room above the tallest bar


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    day: dt.date
    label: str  # "2026-12-01: $1.25" (the bar's <title>)


def spend_bars(spend: dict[dt.date, int], last_day: dt.date, days: int = 30) -> list[Bar]:
    """One bar per day of the ``days`` ending ``last_day`` (zero-height when nothing was
    spent), scaled so the highest reaches the top."""
    span = [last_day - dt.timedelta(days=days - 1 - n) for n in range(days)]
    peak = max((spend.get(day, 0) for day in span), default=0)
    slot = WIDTH / days
    bars = []
    for n, day in enumerate(span):
        nanos = spend.get(day, 0)
        height = 0.0 if peak <= 0 else round((HEIGHT - TOP) * nanos / peak, 2)
        bars.append(
            Bar(
                x=round(n * slot + 1, 2),
                y=round(HEIGHT - height, 2),
                width=round(slot - 2, 2),
                height=height,
                day=day,
                label=f"{day.isoformat()}: ${format_usd(nanos)}",
            )
        )
    return bars
