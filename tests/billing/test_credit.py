"""Credit leases (``alicode_gw/credit.py``, ``sql/006_credit_leases.sql``): a node admits
an account's holds against a slice of its balance in memory; every request still gets a
hold row and a ledger row, the books add up (the audit after each test counts open
leases in ``held_nanos``), and nothing a lease reserves is spent twice."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from alicode_gw.billing import Billing, Hold, Usage, hold_amount
from alicode_gw.catalog import ModelCatalog, Prices
from alicode_gw.credit import Credit
from alicode_gw.errors import InsufficientCreditsError
from alicode_gw.tasks import TaskTracker
from tests.billing.conftest import USD, TestAccount, balances, new_account

MODEL = "claude-haiku-4-5"  # $1 in, $5 out; the dearest input-side rate is $2 (1h write)


def rid() -> str:
    return f"req_{secrets.token_hex(8)}"


@pytest.fixture
async def tracker() -> AsyncIterator[TaskTracker]:
    tasks = TaskTracker()
    yield tasks
    await tasks.drain(5)


@pytest.fixture
async def leased(
    pool: asyncpg.Pool, redis: Redis, redis_prefix: str, tmp_path: Path, tracker: TaskTracker
) -> AsyncIterator[Billing]:
    """A Billing with credit leases, closed (as a stopping node does) at the end."""
    credit = Credit(pool, tracker, max_pct=50)
    billing = Billing(
        pool,
        redis,
        redis_prefix=f"{redis_prefix}{secrets.token_hex(3)}:",
        data_dir=tmp_path,
        tasks=tracker,
        credit=credit,
    )
    yield billing
    await tracker.drain(5)
    await credit.close_all()


def prices(catalog: ModelCatalog, model: str = MODEL) -> Prices:
    info = catalog.resolve(model)
    assert info is not None
    return info.prices


async def hold(
    billing: Billing, account: TestAccount, catalog: ModelCatalog, request_id: str
) -> Hold:
    return await billing.hold(
        request_id, account.key_id, MODEL, 100, 100, "::1", account_id=account.id,
        prices=prices(catalog),
    )  # fmt: skip


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(500):  # polled: the condition is in the database
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 5 s")


async def open_leases(pool: asyncpg.Pool, account_id: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM billing_leases WHERE account_id = $1 AND status = 'open'", account_id
    )


async def lease_ready(billing: Billing, account: TestAccount) -> None:
    assert billing.credit is not None
    credit = billing.credit

    async def ready() -> bool:
        return credit.leased(account.id) is not None

    await until(ready)


def test_hold_amount_is_the_sql_worst_case() -> None:
    haiku = Prices(1_000_000, 5_000_000, 1_250_000, 2_000_000, 100_000, 50)
    # 100 input at the 1h-write rate ($2) + 100 output at $5, no batch discount
    assert hold_amount(haiku, 100, 100) == 700_000


async def test_second_hold_is_taken_from_a_lease_and_billed_the_same(
    leased: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    first = await hold(leased, account, model_catalog, rid())
    assert first.lease_id is None  # no lease yet: the ordinary round trip; one is asked for
    await lease_ready(leased, account)
    (lease,) = await open_leases(pool, account.id)
    assert lease["amount_nanos"] == 16 * 700_000  # HOLDS_PER_LEASE holds like the first

    trips = leased.round_trips
    second_id = rid()
    second = await hold(leased, account, model_catalog, second_id)
    assert second.lease_id == lease["id"]
    assert leased.round_trips == trips  # admitted before any database round trip
    await leased.settle(first.request_id, Usage(100, 10))
    charged = await leased.settle(second_id, Usage(100, 10))
    assert charged == second.cost_nanos(Usage(100, 10)) == 150_000
    rows = await pool.fetch(
        "SELECT h.lease_id, h.status, l.cost_nanos FROM billing_holds h"
        " JOIN ledger l USING (request_id) WHERE h.account_id = $1 ORDER BY h.created_at",
        account.id,
    )
    assert [(r["lease_id"], r["status"], r["cost_nanos"]) for r in rows] == [
        (None, "settled", 150_000),
        (lease["id"], "settled", 150_000),
    ]
    # The unspent part of the leased hold went back into the lease.
    (after,) = await open_leases(pool, account.id)
    assert after["amount_nanos"] == lease["amount_nanos"] - 150_000
    assert await balances(pool, account.id) == (USD - 300_000, after["amount_nanos"])


async def test_leased_holds_under_concurrency_add_up(
    leased: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD // 10)
    await leased.release((await hold(leased, account, model_catalog, rid())).request_id)
    await lease_ready(leased, account)
    before, _ = await balances(pool, account.id)

    async def one(n: int) -> int:
        request_id = rid()
        try:
            await hold(leased, account, model_catalog, request_id)
        except InsufficientCreditsError:
            return 0
        await asyncio.sleep(0.001 * (n % 5))
        if n % 7 == 0:
            await leased.release(request_id)
            return 0
        return await leased.settle(request_id, Usage(50 + n, n))

    charged: list[int] = []
    for wave in range(10):  # 30 at a time: later waves find the lease grown
        charged += await asyncio.gather(*(one(wave * 30 + n) for n in range(30)))
    assert leased.credit is not None
    leased_holds = await pool.fetchval(
        "SELECT count(*) FROM billing_holds WHERE account_id = $1 AND lease_id IS NOT NULL",
        account.id,
    )
    assert leased_holds > 100  # most of them never waited for a hold round trip
    ledger_sum = await pool.fetchval(
        "SELECT -sum(amount_nanos) FROM ledger WHERE account_id = $1 AND kind = 'charge'",
        account.id,
    )
    after, _ = await balances(pool, account.id)
    assert before - after == ledger_sum == sum(charged)


async def test_a_poor_account_gets_no_lease_and_402_as_before(
    leased: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=1_000_000)  # one hold of 700_000 fits
    first = await hold(leased, account, model_catalog, rid())
    with pytest.raises(InsufficientCreditsError):
        await hold(leased, account, model_catalog, rid())
    await leased.settle(first.request_id, Usage(100, 100))  # 600_000
    await asyncio.sleep(0.05)  # a lease asked for meanwhile is refused: half of $0.0004
    assert await open_leases(pool, account.id) == []
    assert await balances(pool, account.id) == (400_000, 0)


async def test_a_lease_never_lends_more_than_the_node_knows_is_free(
    leased: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    await leased.release((await hold(leased, account, model_catalog, rid())).request_id)
    await lease_ready(leased, account)
    assert leased.credit is not None
    lease = leased.credit.leased(account.id)
    assert lease is not None
    holds = [await hold(leased, account, model_catalog, rid()) for _ in range(16)]
    assert all(h.lease_id == lease.id for h in holds)
    assert lease.free == 0
    # The 17th waits for the database (and asks for the lease to grow).
    extra = await hold(leased, account, model_catalog, rid())
    assert extra.lease_id is None
    for h in [*holds, extra]:
        await leased.release(h.request_id)
    (row,) = await open_leases(pool, account.id)
    assert lease.free <= row["amount_nanos"]


async def test_a_settlement_whose_hold_never_landed_takes_it(
    billing: Billing, pool: asyncpg.Pool
) -> None:
    """What a journal replay does: the settlement carries the hold's parameters."""
    account = await new_account(pool, nanos=USD)
    lease_id = await pool.fetchval(
        "SELECT lease_id FROM billing.lease_open($1, 'test', 10000000, 1, 50, 60)", account.id
    )
    request_id = rid()
    entry = {
        "op": "settle", "request_id": request_id, "estimated": False, "input_tokens": 100,
        "output_tokens": 10, "cache_creation_5m": 0, "cache_creation_1h": 0, "cache_read": 0,
        "key_id": account.key_id, "model": MODEL, "estimated_input": 100, "max_tokens": 100,
        "client_ip": "::1", "lease_id": lease_id,
    }  # fmt: skip
    assert await billing._apply(json.loads(json.dumps(entry))) == 150_000
    assert await billing._apply(entry) == 150_000  # replayed twice: billed once
    amount = await pool.fetchval("SELECT amount_nanos FROM billing_leases WHERE id = $1", lease_id)
    assert amount == 10_000_000 - 150_000
    assert await pool.fetchval("SELECT billing.lease_close($1)", lease_id) == amount
    assert await balances(pool, account.id) == (USD - 150_000, 0)


async def test_an_expired_lease_goes_back_and_its_holds_still_settle(
    leased: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    await leased.release((await hold(leased, account, model_catalog, rid())).request_id)
    await lease_ready(leased, account)
    in_flight = await hold(leased, account, model_catalog, rid())
    assert in_flight.lease_id is not None
    await until(lambda: _landed(pool, in_flight.request_id))
    # The node stopped renewing (it died, or lost the database): the sweeper takes the
    # lease back; the hold taken from it stays until it is settled.
    await pool.execute(
        "UPDATE billing_leases SET expires_at = now() - interval '1 s' WHERE id = $1",
        in_flight.lease_id,
    )
    assert await leased.sweep() == 1
    assert await balances(pool, account.id) == (USD, 700_000)
    assert await leased.settle(in_flight.request_id, Usage(100, 10)) == 150_000
    assert await balances(pool, account.id) == (USD - 150_000, 0)
    # The node learns it at its next renewal and stops using the lease.
    assert leased.credit is not None
    await leased.credit.renew()
    assert leased.credit.leased(account.id) is None


async def test_a_dearer_price_in_the_database_shrinks_what_the_node_lends(
    leased: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    await leased.release((await hold(leased, account, model_catalog, rid())).request_id)
    await lease_ready(leased, account)
    assert leased.credit is not None
    lease = leased.credit.leased(account.id)
    assert lease is not None
    await pool.execute("UPDATE models SET output_price = 10000000 WHERE id = $1", MODEL)
    try:
        free = lease.free
        dear = await hold(leased, account, model_catalog, rid())  # the node's stale copy
        await until(lambda: _landed(pool, dear.request_id))
        await asyncio.sleep(0.01)
        # The row took 100 x $2 + 100 x $10 = 1_200_000, not the node's 700_000.
        assert lease.free == free - 1_200_000
        assert dear.cost_nanos(Usage(0, 100)) == 1_000_000  # the row's snapshot now
        assert await leased.settle(dear.request_id, Usage(0, 100)) == 1_000_000
    finally:
        await pool.execute("UPDATE models SET output_price = 5000000 WHERE id = $1", MODEL)


async def test_close_all_gives_every_lease_back(
    leased: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    await leased.release((await hold(leased, account, model_catalog, rid())).request_id)
    await lease_ready(leased, account)
    assert leased.credit is not None
    await leased.credit.close_all()
    assert await open_leases(pool, account.id) == []
    assert await balances(pool, account.id) == (USD, 0)
    assert leased.credit.leased(account.id) is None


async def _landed(pool: asyncpg.Pool, request_id: str) -> bool:
    return bool(
        await pool.fetchval("SELECT count(*) FROM billing_holds WHERE request_id = $1", request_id)
    )
