"""The overview (/dashboard), usage by day / key / model / client IP with its CSV
(/dashboard/usage, /dashboard/usage.csv) and the billing page (/dashboard/billing).

All read the ledger's charge rows through ``dashboard.usage_by``: the daily rollup for
closed days, the ledger itself for the rest (docs/dashboard.md, "Speed")."""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass

from aiohttp import web

from alicode_gw.dashboard import chart, store
from alicode_gw.dashboard.site import Page, row_id
from alicode_gw.errors import HTML_HEADERS, InvalidRequestError
from alicode_gw.identity import accounts
from alicode_gw.money.usd import format_usd

MAX_DAYS = 366
FIRST_YEAR, LAST_YEAR = 2000, 2999
LEDGER_PAGE = 50
DIMENSIONS = {"day": "Day", "key": "Key", "model": "Model", "ip": "Client IP"}


@dataclass(frozen=True, slots=True)
class Period:
    first: dt.date
    last: dt.date


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def parse_period(query: dict[str, str], default_days: int = 30) -> Period:
    """``from`` / ``to`` (YYYY-MM-DD, UTC, inclusive); default the last 30 days."""
    last_day = today()
    try:
        last = dt.date.fromisoformat(query["to"]) if query.get("to") else last_day
        first = (
            dt.date.fromisoformat(query["from"])
            if query.get("from")
            else last - dt.timedelta(days=default_days - 1)
        )
    except (ValueError, OverflowError) as exc:
        raise InvalidRequestError("Dates are written YYYY-MM-DD.") from exc
    if not (first.year >= FIRST_YEAR and last.year <= LAST_YEAR):
        raise InvalidRequestError(f"Dates are between {FIRST_YEAR} and {LAST_YEAR}.")
    if first > last:
        raise InvalidRequestError("The period starts after it ends.")
    if (last - first).days >= MAX_DAYS:
        raise InvalidRequestError(f"A period is at most {MAX_DAYS} days.")
    return Period(first, last)


async def _key_names(page: Page) -> dict[str, str]:
    records = await accounts.list_keys(page.db, page.me.email)
    return {str(r.id): f"{r.name} ({r.masked})" for r in records}


async def overview(page: Page) -> web.StreamResponse:
    last = today()
    first = last - dt.timedelta(days=29)
    days = (await store.usage(page.db, page.me.account_id, first, last, ("day",)))["day"]
    by_day = {dt.date.fromisoformat(r.label): r for r in days if r.label}

    def since(n: int) -> tuple[int, int]:
        rows = [r for d, r in by_day.items() if d > last - dt.timedelta(days=n)]
        return sum(r.cost_nanos for r in rows), sum(r.requests for r in rows)

    spend = {d: r.cost_nanos for d, r in by_day.items()}
    return page.render(
        "overview.html",
        today_spend=since(1),
        week_spend=since(7),
        month_spend=since(30),
        bars=chart.spend_bars(spend, last),
        chart_width=chart.WIDTH,
        chart_height=chart.HEIGHT,
        available=page.me.balance_nanos - page.me.held_nanos,
    )


async def usage(page: Page) -> web.StreamResponse:
    period = parse_period(page.query)
    return page.render(
        "usage.html",
        period=period,
        tables=await store.usage(
            page.db, page.me.account_id, period.first, period.last, tuple(DIMENSIONS)
        ),
        dimensions=DIMENSIONS,
        key_names=await _key_names(page),
    )


def _cell(text: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def usage_csv(page: Page) -> web.StreamResponse:
    period = parse_period(page.query)
    by = page.query.get("by", "day")
    if by not in DIMENSIONS:
        raise InvalidRequestError(f"by is one of {', '.join(DIMENSIONS)}.")
    rows = (await store.usage(page.db, page.me.account_id, period.first, period.last, (by,)))[by]
    names = await _key_names(page) if by == "key" else {}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(
        [
            by,
            "requests",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "cost_usd",
        ]
    )
    for r in rows:
        label = names.get(r.label or "", r.label) if by == "key" else r.label
        writer.writerow(
            [
                _cell(label or ""),
                r.requests,
                r.input_tokens,
                r.output_tokens,
                r.cache_read,
                r.cache_write,
                format_usd(r.cost_nanos),
            ]
        )
    filename = f"usage-by-{by}-{period.first}-{period.last}.csv"
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={**HTML_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def billing(page: Page) -> web.StreamResponse:
    period = parse_period(page.query)
    before_id = row_id(page.query.get("before", ""))
    rows = await store.ledger_page(
        page.db, page.me.account_id, before_id, LEDGER_PAGE, topups_only=False
    )
    topups = await store.ledger_page(page.db, page.me.account_id, None, 20, topups_only=True)
    days = (await store.usage(page.db, page.me.account_id, period.first, period.last, ("day",)))[
        "day"
    ]
    return page.render(
        "billing.html",
        period=period,
        rows=rows,
        topups=topups,
        days=list(reversed(days)),
        key_names=await _key_names(page),
        next_before=rows[-1].id if len(rows) == LEDGER_PAGE else None,
        available=page.me.balance_nanos - page.me.held_nanos,
    )
