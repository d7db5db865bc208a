"""The batch money functions on their own (sql/functions/batches.sql): the price of a
settled batch with cache reads and writes, and a usage past the hold and the balance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from alicode_gw.batches import store
from alicode_gw.money import catalog, ledger
from alicode_gw.money.contract import Usage
from tests.support.customers import MODEL, make_customer


async def _opened(db: asyncpg.Connection, key_id: int, batch_id: str) -> int:
    opened = await store.open_batch(
        db,
        batch_id=batch_id,
        key_id=key_id,
        client_ip="127.0.0.1",
        items=[store.HoldItem("a", MODEL, 100, 50), store.HoldItem("b", MODEL, 100, 50)],
        expires_at=datetime.now(UTC) + timedelta(hours=24),
        hold_ttl_seconds=3600,
    )
    assert opened.outcome == "held"
    await store.mark_submitted(
        db, batch_id, upstream_id=f"up_{batch_id}", credential_id=1, next_poll_seconds=60
    )
    return opened.hold_nanos


async def _prices(db: asyncpg.Connection) -> catalog.Prices:
    info = catalog.resolve_in({m.id: m for m in await catalog.load_models(db)}, MODEL)
    assert info is not None
    return info.prices


async def test_cache_usage_is_billed_at_the_batch_price_with_its_multipliers(
    db: asyncpg.Connection,
) -> None:
    customer = await make_customer(db)
    before = (await ledger.account_summary(db, customer.email))["balance_nanos"]
    await _opened(db, customer.key_id, "msgbatch_sqlcache")
    usage = Usage(
        input_tokens=70,
        output_tokens=40,
        cache_creation_5m=30,
        cache_creation_1h=20,
        cache_read=500,
    )
    settled = await store.settle(
        db,
        "msgbatch_sqlcache",
        usage={MODEL: usage},
        counts=store.Counts(succeeded=2),
        ended_at=None,
    )
    prices = await _prices(db)
    full = prices.cost_nanos(**usage.counts())
    assert settled.outcome == "settled"
    assert settled.charged_nanos == prices.cost_nanos(**usage.counts(), batch=True)
    assert abs(2 * settled.charged_nanos - full) <= 1
    after = (await ledger.account_summary(db, customer.email))["balance_nanos"]
    assert before - after == settled.charged_nanos
    again = await store.settle(
        db,
        "msgbatch_sqlcache",
        usage={MODEL: usage},
        counts=store.Counts(succeeded=2),
        ended_at=None,
    )
    assert (again.outcome, again.charged_nanos) == ("already_settled", settled.charged_nanos)
    assert not await ledger.audit(db)


async def test_usage_past_the_hold_and_the_balance_is_a_shortfall(
    db: asyncpg.Connection,
) -> None:
    customer = await make_customer(db, usd=0)
    prices = await _prices(db)
    worst = -(
        -(100 * max(prices.input, prices.cache_write_1h) + 50 * prices.output) * 50 // 100_000
    )
    await ledger.topup(db, customer.email, 3 * worst)
    hold = await _opened(db, customer.key_id, "msgbatch_sqlshort")
    assert hold == 2 * worst
    usage = Usage(input_tokens=100_000, output_tokens=100_000)
    settled = await store.settle(
        db,
        "msgbatch_sqlshort",
        usage={MODEL: usage},
        counts=store.Counts(succeeded=2),
        ended_at=None,
    )
    assert settled.charged_nanos == 3 * worst  # all the account had, not more
    row = await db.fetchrow(
        "SELECT cost_nanos, shortfall_nanos FROM ledger WHERE request_id = 'msgbatch_sqlshort'"
    )
    cost = prices.cost_nanos(**usage.counts(), batch=True)
    assert (row["cost_nanos"], row["shortfall_nanos"]) == (cost, cost - 3 * worst)
    summary = await ledger.account_summary(db, customer.email)
    assert (summary["balance_nanos"], summary["held_nanos"]) == (0, 0)
    assert not await ledger.audit(db)
