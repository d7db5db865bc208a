"""Credit leases (``money/leases.py``, ``sql/functions/billing_leases.sql``): a node admits
an account's holds against a slice of its balance in memory and bills each leased
request with one ``settle_leased``; every billed request has its ledger row, the books
add up (the audit after each test counts open leases in ``held_nanos``), and nothing a
lease reserves is spent twice."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from alicode_gw.errors import InsufficientCreditsError
from alicode_gw.money.billing import Billing, Hold, hold_amount
from alicode_gw.money.catalog import ModelCatalog, Prices
from alicode_gw.money.contract import Usage
from alicode_gw.money.leases import Credit, Lease
from alicode_gw.tasks import TaskTracker
from tests.support.money import USD, TestAccount, balances, new_account

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


@pytest.fixture
def credit(leased: Billing) -> Credit:
    """The credit leases of ``leased``."""
    assert leased.credit is not None
    return leased.credit


async def hold(
    billing: Billing, account: TestAccount, catalog: ModelCatalog, request_id: str
) -> Hold:
    info = catalog.resolve(MODEL)
    assert info is not None
    leased = billing.hold_leased(
        request_id, account.key_id, MODEL, 100, 100, "::1", account_id=account.id, priced=info
    )
    return leased or await billing.hold(request_id, account.key_id, MODEL, 100, 100, "::1")


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


@contextlib.contextmanager
def database_down(billing: Billing) -> Iterator[None]:
    """Every billing batch fails as if PostgreSQL were unreachable."""
    flush = billing._ops._flush

    async def unreachable(ops: list[dict[str, object]]) -> list[object]:
        raise ConnectionRefusedError("database down")

    billing._ops._flush = unreachable  # type: ignore[assignment]
    try:
        yield
    finally:
        billing._ops._flush = flush  # type: ignore[method-assign]


async def with_lease(billing: Billing, account: TestAccount, catalog: ModelCatalog) -> Lease:
    """The account's first request takes the ordinary hold (released here) and asks for
    a lease; the lease once the node has it."""
    await billing.release((await hold(billing, account, catalog, rid())).request_id)
    await lease_ready(billing, account)
    assert billing.credit is not None
    lease = billing.credit.leased(account.id)
    assert lease is not None
    return lease


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
    assert leased.round_trips == trips  # admitted without a database round trip
    await leased.settle(first.request_id, Usage(100, 10))
    charged = await leased.settle(second_id, Usage(100, 10))
    assert charged == second.cost_nanos(Usage(100, 10)) == 150_000
    rows = await pool.fetch(
        "SELECT request_id, requested_model, model, cost_nanos, amount_nanos, batch, status"
        " FROM ledger WHERE account_id = $1 AND kind = 'charge' ORDER BY id",
        account.id,
    )
    assert [tuple(r.values())[1:] for r in rows] == [
        (MODEL, MODEL, 150_000, -150_000, False, "complete"),
        (MODEL, MODEL, 150_000, -150_000, False, "complete"),
    ]
    assert [r["request_id"] for r in rows] == [first.request_id, second_id]
    # A leased request has no hold row: its hold lived in the node's memory.
    assert await _has_hold_row(pool, second_id) is False
    # The lease paid for what the leased request spent.
    (after,) = await open_leases(pool, account.id)
    assert after["amount_nanos"] == lease["amount_nanos"] - 150_000
    assert await balances(pool, account.id) == (USD - 300_000, after["amount_nanos"])


async def test_a_leased_request_that_produced_nothing_costs_no_round_trip(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    lease = await with_lease(leased, account, model_catalog)
    free, trips = lease.free, leased.round_trips
    failed = await hold(leased, account, model_catalog, rid())
    assert lease.free == free - 700_000
    await leased.release(failed.request_id)
    assert lease.free == free and leased.round_trips == trips
    assert await balances(pool, account.id) == (USD, lease.free)


async def test_leased_holds_under_concurrency_add_up(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD // 10)
    await with_lease(leased, account, model_catalog)
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
    held_rows = await pool.fetchval(
        "SELECT count(*) FROM billing_holds WHERE account_id = $1", account.id
    )
    assert held_rows < 200  # most of the 300 never waited for a hold round trip
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
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    lease = await with_lease(leased, account, model_catalog)
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


async def test_a_journaled_leased_settlement_is_billed_once(
    leased: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    """The database was unreachable when a leased request ended: its settlement went to
    the journal, with everything it needs; replayed (twice), it is billed once."""
    account = await new_account(pool, nanos=USD)
    await with_lease(leased, account, model_catalog)
    request_id = rid()
    assert (await hold(leased, account, model_catalog, request_id)).lease_id is not None
    with database_down(leased):
        assert await leased.settle(request_id, Usage(100, 10)) == 150_000  # provisional
    (journaled,) = await leased.journal._redis.xrange(leased.journal.stream_key)
    await leased.journal._redis.xadd(leased.journal.stream_key, journaled[1])  # twice
    assert await leased.replay_journal() == 2
    assert (
        await pool.fetchval(
            "SELECT -sum(amount_nanos) FROM ledger WHERE request_id = $1", request_id
        )
        == 150_000
    )


async def test_an_expired_lease_goes_back_and_its_requests_still_settle(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    await with_lease(leased, account, model_catalog)
    in_flight = await hold(leased, account, model_catalog, rid())
    assert in_flight.lease_id is not None
    # The node stopped renewing (it died, or lost the database): the sweeper takes the
    # lease back while a request admitted against it is still running.
    await pool.execute(
        "UPDATE billing_leases SET expires_at = now() - interval '1 s' WHERE id = $1",
        in_flight.lease_id,
    )
    assert await leased.sweep() == 1
    assert await balances(pool, account.id) == (USD, 0)
    # Billed all the same, from the free balance.
    assert await leased.settle(in_flight.request_id, Usage(100, 10)) == 150_000
    assert await balances(pool, account.id) == (USD - 150_000, 0)
    # The node learns it at its next renewal and stops using the lease.
    await credit.renew()
    assert credit.leased(account.id) is None


async def test_a_charge_never_takes_more_than_its_worst_case_from_the_lease(
    leased: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    """A request that used more than estimated (its input was underestimated) pays the
    excess from the free balance, never from what the lease keeps for the others."""
    account = await new_account(pool, nanos=16 * 700_000 * 2 + 100_000)
    await with_lease(leased, account, model_catalog)
    (lease,) = await open_leases(pool, account.id)
    big = await hold(leased, account, model_catalog, rid())
    assert big.lease_id == lease["id"]
    # 100_000 input tokens at $1 + 10 output: $0.10005, far above the 700_000 worst case;
    # the free balance outside the lease is 11_300_000.
    charged = await leased.settle(big.request_id, Usage(100_000, 10))
    assert charged == 11_300_000 + 700_000  # the worst case from the lease, the rest free
    (after,) = await open_leases(pool, account.id)
    assert after["amount_nanos"] == lease["amount_nanos"] - 700_000
    shortfall = await pool.fetchval(
        "SELECT shortfall_nanos FROM ledger WHERE request_id = $1", big.request_id
    )
    assert shortfall == 100_050_000 - 12_000_000


async def test_close_all_gives_every_lease_back(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    await with_lease(leased, account, model_catalog)
    await credit.close_all()
    assert await open_leases(pool, account.id) == []
    assert await balances(pool, account.id) == (USD, 0)
    assert credit.leased(account.id) is None


async def _has_hold_row(pool: asyncpg.Pool, request_id: str) -> bool:
    return bool(
        await pool.fetchval("SELECT count(*) FROM billing_holds WHERE request_id = $1", request_id)
    )


async def test_a_lease_grows_to_at_most_half_of_what_is_free(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=100 * 700_000)
    await with_lease(leased, account, model_catalog)
    lease = credit.leased(account.id)
    assert lease is not None and lease.total == 16 * 700_000
    for _ in range(10):  # asked to grow again and again
        await pool.fetchval("SELECT billing.lease_grow($1, 1000000000, 50, 60)", lease.id)
    (row,) = await open_leases(pool, account.id)
    assert row["amount_nanos"] == 50 * 700_000
    assert await balances(pool, account.id) == (100 * 700_000, 50 * 700_000)


async def test_a_journaled_settlement_and_a_renewal_never_raise_what_the_node_lends(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    """The database refused a leased request's settlement (journaled); a renewal before
    the replay must not hand the node the money the replay is about to take."""
    account = await new_account(pool, nanos=USD)
    lease = await with_lease(leased, account, model_catalog)
    request = await hold(leased, account, model_catalog, rid())
    with database_down(leased):
        assert await leased.settle(request.request_id, Usage(100, 10)) == 150_000  # provisional
    assert await leased.journal_length() == 1
    await credit.renew()
    assert await leased.replay_journal() == 1
    (row,) = await open_leases(pool, account.id)
    assert lease.free <= row["amount_nanos"] == 16 * 700_000 - 150_000


async def test_a_lease_that_may_not_grow_gets_no_second_lease_beside_it(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=40 * 700_000)
    await with_lease(leased, account, model_catalog)
    for _ in range(6):  # short again and again: it grows to its cap, then stops
        credit._refused.clear()
        await credit._acquire(account.id, 700_000)
    rows = await open_leases(pool, account.id)
    assert [r["amount_nanos"] for r in rows] == [20 * 700_000]  # one lease, half of it all


async def test_a_leased_request_outlives_the_hold_ttl(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    """A stream longer than an hour: the sweeper's purge of this node's expired holds
    must not forget a leased request's hold, its only record."""
    account = await new_account(pool, nanos=USD)
    await with_lease(leased, account, model_catalog)
    long = await hold(leased, account, model_catalog, rid())
    leased._open[long.request_id] = (long, 0.0)  # its hold TTL has passed
    await leased.sweep()
    assert await leased.settle(long.request_id, Usage(100, 10)) == 150_000
    lease = credit.leased(account.id)
    assert lease is not None and lease.in_flight == 0


async def test_an_ordinary_hold_may_use_the_unused_money_of_this_nodes_lease(
    leased: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=32 * 700_000)
    await with_lease(leased, account, model_catalog)
    assert await balances(pool, account.id) == (32 * 700_000, 16 * 700_000)
    # Worst case 20 x 700_000: more than is free outside the lease, and more than the
    # lease has; the account has it all the same.
    big = await leased.hold(rid(), account.key_id, MODEL, 100, 2760, "::1", account_id=account.id)
    assert big.lease_id is None and big.amount_nanos == 20 * 700_000
    await leased.release(big.request_id)
    assert await balances(pool, account.id) == (32 * 700_000, 0)


async def test_a_refused_hold_takes_from_the_lease_only_what_it_needs(
    leased: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=32 * 700_000)
    await with_lease(leased, account, model_catalog)
    # Other holds take most of what is free outside the lease: 1_200_000 is left.
    other = await leased.hold(rid(), account.key_id, MODEL, 0, 2000, "::1")  # 10_000_000
    assert await balances(pool, account.id) == (32 * 700_000, 16 * 700_000 + 10_000_000)
    needing = await leased.hold(  # 2_000_000: more than is free, far less than the lease
        rid(), account.key_id, MODEL, 0, 400, "::1", account_id=account.id
    )
    assert needing.amount_nanos == 2_000_000
    (lease,) = await open_leases(pool, account.id)
    assert lease["amount_nanos"] == 16 * 700_000 - 2_000_000  # the rest stays lent
    for request in (other, needing):
        await leased.release(request.request_id)


async def test_an_idle_lease_is_not_closed_once_a_request_was_admitted_against_it(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    first, second = await new_account(pool, nanos=USD), await new_account(pool, nanos=USD)
    for account in (first, second):
        await with_lease(leased, account, model_catalog)
    for account in (first, second):
        lease = credit.leased(account.id)
        assert lease is not None
        lease.used -= 3600  # idle for an hour
    close = credit._close
    admitted: list[Hold] = []

    async def close_while_a_request_arrives(lease: Lease) -> None:
        if not admitted:  # while the first close waits for the database
            admitted.append(await hold(leased, second, model_catalog, rid()))
        await close(lease)

    credit._close = close_while_a_request_arrives  # type: ignore[method-assign]
    await credit.renew()
    (request,) = admitted
    assert request.lease_id is not None and credit.leased(second.id) is not None
    assert await open_leases(pool, first.id) == []
    (row,) = await open_leases(pool, second.id)
    assert row["id"] == request.lease_id
    await leased.release(request.request_id)


async def test_a_shrink_the_database_may_not_have_applied_retires_the_lease(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    lease = await with_lease(leased, account, model_catalog)

    class Unreachable:
        async def fetch(self, *args: object) -> object:
            raise ConnectionResetError("database gone mid-call")

    database, credit._db = credit._db, Unreachable()  # type: ignore[assignment]
    try:
        assert await credit.shrink(account.id, 700_000) is False
    finally:
        credit._db = database
    # Applied or not, the node lends nothing more from it; the database expires it.
    assert credit.leased(account.id) is None
    assert credit.take(account.id, 700_000) is None
    await pool.execute("UPDATE billing_leases SET expires_at = now() WHERE id = $1", lease.id)
    await asyncio.sleep(0.01)
    assert await leased.sweep() >= 1


class _SlowReplies:
    """A pool whose answers to one statement arrive late (after it ran)."""

    def __init__(self, pool: asyncpg.Pool, statement: str, delay: float) -> None:
        self._pool, self._statement, self._delay = pool, statement, delay

    async def _late(self, query: str, result: object) -> object:
        if self._statement in query:
            await asyncio.sleep(self._delay)
        return result

    async def fetch(self, query: str, *args: object) -> object:
        return await self._late(query, await self._pool.fetch(query, *args))

    async def fetchval(self, query: str, *args: object) -> object:
        return await self._late(query, await self._pool.fetchval(query, *args))

    async def fetchrow(self, query: str, *args: object) -> object:
        return await self._late(query, await self._pool.fetchrow(query, *args))


@contextlib.contextmanager
def late_answers(credit: Credit, statement: str, delay: float) -> Iterator[None]:
    pool = credit._db
    credit._db = _SlowReplies(pool, statement, delay)  # type: ignore[assignment]
    try:
        yield
    finally:
        credit._db = pool


async def test_a_renewal_read_before_a_growth_does_not_cut_it(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    lease = await with_lease(leased, account, model_catalog)
    with late_answers(credit, "lease_renew", 0.3):
        renewing = asyncio.ensure_future(credit.renew())
        await asyncio.sleep(0.1)  # the renewal has read the lease; its answer is late
        credit._refused.clear()
        await credit._acquire(account.id, 700_000)  # grows it meanwhile
        await renewing
    (row,) = await open_leases(pool, account.id)
    assert row["amount_nanos"] == 2 * 16 * 700_000
    assert lease.free == row["amount_nanos"]  # nothing in flight: all of it lendable


async def test_a_shrink_waits_for_a_growth_under_way(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    lease = await with_lease(leased, account, model_catalog)
    with late_answers(credit, "lease_grow", 0.2):
        credit._refused.clear()
        credit._ask(account.id, 700_000)  # a growth whose answer is late
        await asyncio.sleep(0.05)
        assert await credit.shrink(account.id, 30 * 700_000)
    # The shrink came after the growth: it gave back what the grown lease had unused,
    # up to what was asked, and the node's count matches the database's.
    (row,) = await open_leases(pool, account.id)
    assert row["amount_nanos"] == 2 * 16 * 700_000 - 30 * 700_000
    assert lease.free == row["amount_nanos"]


async def test_a_lease_grows_ahead_of_the_requests_in_flight(
    leased: Billing, credit: Credit, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    """Under saturation every request in flight is followed by another: the lease asks
    to grow while it still covers them all, so none falls to the ordinary hold (which
    waits behind the settlements queued before it) while the growth is under way."""
    account = await new_account(pool, nanos=USD)
    lease = await with_lease(leased, account, model_catalog)
    granted = lease.total
    assert granted == 16 * 700_000
    held = [await hold(leased, account, model_catalog, rid()) for _ in range(8)]
    assert all(h.lease_id == lease.id for h in held)
    for _ in range(200):  # polled: the growth is a database round trip
        if lease.total > granted:
            break
        await asyncio.sleep(0.01)
    assert lease.total > granted  # half of it still free, but 8 in flight
    trips = leased.round_trips
    more = [await hold(leased, account, model_catalog, rid()) for _ in range(8)]
    assert all(h.lease_id == lease.id for h in more) and leased.round_trips == trips
    for h in held + more:
        await leased.settle(h.request_id, Usage(100, 10))
