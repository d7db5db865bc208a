"""Settlements survive PostgreSQL being unreachable: journaled (Redis stream, or a local
file when Redis is down too) and applied exactly once when the database is back. The
restart test runs a disposable embedded PostgreSQL that it stops and starts itself."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from alicode_gw.dev.embedded import EmbeddedPostgres
from alicode_gw.errors import ServiceUnavailableError
from alicode_gw.money.billing import Billing
from alicode_gw.money.catalog import ModelCatalog
from alicode_gw.money.contract import Usage
from alicode_gw.store import migrate
from alicode_gw.store.backends import create_redis
from alicode_gw.tasks import TaskTracker
from tests.support.keys import PostgresProxy
from tests.support.money import USD, assert_audit_clean, balances, new_account

pytestmark = pytest.mark.slow


def rid() -> str:
    return f"req_{secrets.token_hex(8)}"


async def test_database_restart_during_a_run(
    tmp_path: Path, redis: Redis, redis_url: str, redis_prefix: str
) -> None:
    embedded = EmbeddedPostgres(tmp_path / "pg")
    url = await asyncio.to_thread(embedded.start)
    pool: asyncpg.Pool | None = None
    try:
        await migrate.run(url)
        pool = await asyncpg.create_pool(url, min_size=2, max_size=5)
        assert pool is not None
        models = ModelCatalog(pool)
        await models.refresh()
        prefix = f"{redis_prefix}restart-{secrets.token_hex(3)}:"
        billing = Billing(pool, redis, redis_prefix=prefix, data_dir=tmp_path)
        account = await new_account(pool, nanos=USD)
        before, during, failed = rid(), rid(), rid()
        for request_id in (before, during, failed):
            await billing.hold(request_id, account.key_id, "claude-sonnet-4-5", 1000, 1000, "::1")
        # sonnet-4-5: 1000 in x $3 + 500 out x $15 = $0.0105
        assert await billing.settle(before, Usage(1000, 500)) == 10_500_000

        await asyncio.to_thread(embedded.stop)  # PostgreSQL goes away mid-run

        # settle: journaled; the provisional cost comes from the hold's price snapshot
        # sonnet-4-5: 2000 in x $3 + 1000 out x $15 + 4000 cache read x $0.30 = $0.0222
        assert await billing.settle(during, Usage(2000, 1000, cache_read=4000)) == 22_200_000
        await billing.release(failed)  # journaled too
        assert await billing.journal_length() == 2
        with pytest.raises(ServiceUnavailableError):  # nothing new is accepted meanwhile
            await billing.hold(rid(), account.key_id, "claude-sonnet-4-5", 1, 1, "::1")
        assert await billing.replay_journal() == 0  # still down: nothing lost either
        assert await billing.journal_length() == 2
        pending = await redis.xrange(billing.journal.stream_key, "-", "+")

        url = await asyncio.to_thread(embedded.start)  # back (same data directory)

        # the tracked replayer applies the journal on its own
        tasks = TaskTracker()
        billing_with_loops = Billing(
            pool,
            redis,
            redis_prefix=prefix,
            data_dir=tmp_path,
            replay_interval=0.1,
            sweep_interval=0.1,
        )
        billing_with_loops.start(tasks)
        try:
            for _ in range(300):
                if not await billing_with_loops.journal_length():
                    break
                await asyncio.sleep(0.1)
        finally:
            await tasks.drain(1)
        assert await billing_with_loops.journal_length() == 0
        assert await balances(pool, account.id) == (USD - 10_500_000 - 22_200_000, 0)

        # a node that applied the entries but died before deleting them: replayed again,
        # nothing changes
        for _, fields in pending:
            await redis.xadd(billing.journal.stream_key, fields)
        assert await billing.replay_journal() == 2
        assert await billing.settle(during, Usage(5, 5)) == 22_200_000
        assert await balances(pool, account.id) == (USD - 10_500_000 - 22_200_000, 0)
        charges = await pool.fetch(
            "SELECT request_id, amount_nanos, cache_read FROM ledger"
            " WHERE account_id = $1 AND kind = 'charge' ORDER BY id",
            account.id,
        )
        assert [(r["request_id"], r["amount_nanos"]) for r in charges] == [
            (before, -10_500_000),
            (during, -22_200_000),
        ]
        assert charges[1]["cache_read"] == 4000
        status = await pool.fetchval(
            "SELECT status FROM billing_holds WHERE request_id = $1", failed
        )
        assert status == "released"
        await assert_audit_clean(url, redis_url)
    finally:
        if pool is not None:
            await pool.close()
        await asyncio.to_thread(embedded.stop)


async def test_file_journal_when_redis_is_down_too(
    pool: asyncpg.Pool, redis: Redis, redis_prefix: str, tmp_path: Path
) -> None:
    """PostgreSQL and Redis both unreachable from this node: the settlement goes to the
    local append-only file and is applied, once, when the database answers."""
    account = await new_account(pool, nanos=USD)
    healthy = Billing(pool, redis, redis_prefix=redis_prefix, data_dir=tmp_path)
    request_id = rid()
    await healthy.hold(request_id, account.key_id, "claude-haiku-4-5", 100, 100, "::1")

    dead_pool = await asyncpg.create_pool(
        "postgresql://nobody@127.0.0.1:1/none", min_size=0, max_size=1
    )
    dead_redis = create_redis("redis://127.0.0.1:1/0")
    assert dead_pool is not None
    try:
        cut_off = Billing(
            dead_pool, dead_redis, redis_prefix=redis_prefix, data_dir=tmp_path, db_timeout=5
        )
        assert await cut_off.settle(request_id, Usage(1000, 100)) == 0  # not held here
        assert (tmp_path / "billing-journal.jsonl").read_text().count(request_id) == 1
    finally:
        await dead_pool.close()
        await dead_redis.aclose()
    assert await balances(pool, account.id) == (USD, 700_000)  # held: 100 x $2 + 100 x $5

    assert await healthy.replay_journal() == 1
    assert not (tmp_path / "billing-journal.jsonl").exists()
    # haiku: 1000 in x $1 + 100 out x $5 = $0.0015
    assert await balances(pool, account.id) == (USD - 1_500_000, 0)
    assert await healthy.replay_journal() == 0
    assert await healthy.settle(request_id, Usage(1000, 100)) == 1_500_000


async def test_a_settlement_still_queued_at_shutdown_is_journaled_as_expected(
    pool: asyncpg.Pool,
    redis: Redis,
    redis_prefix: str,
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Shutdown stops the batcher before a queued settlement was sent (it fails with
    ``Closed``): journaled with a warning like an outage, not reported as a bug."""
    account = await new_account(pool, nanos=USD)
    prefix = f"{redis_prefix}closed-{secrets.token_hex(3)}:"
    healthy = Billing(pool, redis, redis_prefix=prefix, data_dir=tmp_path)
    sent, queued = rid(), rid()
    for request_id in (sent, queued):
        await healthy.hold(request_id, account.key_id, "claude-haiku-4-5", 100, 100, "::1")
    async with PostgresProxy(database_url) as proxy:
        slow = await asyncpg.create_pool(proxy.url, min_size=1, max_size=1)
        assert slow is not None
        tasks = TaskTracker()
        try:
            stopping = Billing(
                slow, redis, redis_prefix=prefix, data_dir=tmp_path, tasks=tasks, db_timeout=1
            )
            proxy.stall()  # the database stops answering: the first batch stays in flight
            in_flight = stopping.settle_later(sent, Usage(1000, 100), urgent=True)
            await asyncio.sleep(0.05)
            behind = stopping.settle_later(queued, Usage(1000, 100), urgent=True)
            with caplog.at_level("WARNING", logger="alicode_gw.money.billing"):
                await tasks.drain(0.05)  # shutdown: the flusher is cancelled
                assert await behind == 0  # provisional (not held on this instance)
                with pytest.raises(asyncio.CancelledError):
                    await in_flight  # journaled too, "cancelled by shutdown"
        finally:
            await proxy.cut()  # what was held back never reaches the database
            slow.terminate()
    logged = [r for r in caplog.records if queued in r.getMessage()]
    assert [(r.levelname, r.exc_info) for r in logged] == [("WARNING", None)]
    assert "Closed" in repr(logged[0].args)
    assert await healthy.replay_journal() == 2
    # haiku: 1000 in x $1 + 100 out x $5 = $0.0015 each
    assert await balances(pool, account.id) == (USD - 2 * 1_500_000, 0)
