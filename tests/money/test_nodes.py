"""Holds and credit leases belong to a node that renews a heartbeat (``money/nodes.py``,
``sql/functions/billing_nodes.sql``): a dead node's money comes back within the window,
at once when its successor on the same data dir starts, and a node that was only paused
settles its requests exactly once when it comes back. A restarted gateway replays the
journal before it admits a request."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import anthropic
import asyncpg
from redis.asyncio import Redis

from alicode_gw.config import Config
from alicode_gw.money.billing import Billing
from alicode_gw.money.catalog import ModelCatalog
from alicode_gw.money.contract import LeaseOpen, SettleOp, Usage, batch_element, call
from alicode_gw.money.leases import Credit
from alicode_gw.money.nodes import Node
from alicode_gw.tasks import TaskTracker
from tests.support.customers import make_customer, reset_pool
from tests.support.gateway import start_gateway, stop_gateway
from tests.support.money import USD, balances, new_account

MODEL = "claude-sonnet-4-5"  # a 1000 + 1000 token hold: 1000 x $6 + 1000 x $15 = $0.021
HOLD = 21_000_000


def rid() -> str:
    return f"req_{secrets.token_hex(8)}"


def node(pool: asyncpg.Pool, data_dir: Path | None, dead_after: float = 1.0) -> Node:
    return Node(pool, data_dir=data_dir, heartbeat_interval=0.2, dead_after=dead_after)


def billing_of(
    pool: asyncpg.Pool, redis: Redis, prefix: str, tmp: Path, owner: Node | None
) -> Billing:
    return Billing(
        pool,
        redis,
        redis_prefix=prefix,
        data_dir=tmp,
        node_id=owner.id if owner else None,
        dead_after=owner.dead_after if owner else 30.0,
    )


async def statuses(pool: asyncpg.Pool, request_ids: list[str]) -> list[str]:
    rows = await pool.fetch(
        "SELECT request_id, status FROM billing_holds WHERE request_id = ANY ($1)", request_ids
    )
    by_id = {row["request_id"]: row["status"] for row in rows}
    return [by_id[request_id] for request_id in request_ids]


async def test_a_dead_nodes_holds_and_lease_come_back_within_the_window(
    pool: asyncpg.Pool, redis: Redis, redis_prefix: str, model_catalog: ModelCatalog, tmp_path
) -> None:
    """Node A holds, leases and stops beating (dies); node B's sweeper gives A's money
    back once A's heartbeat is older than the window, not at the hold's 1-hour expiry.
    A's later settlement of one of them (it was only paused) is billed once, from the
    free balance; its release of another changes nothing; so is a request it admitted
    against its closed lease."""
    a, b = node(pool, tmp_path / "a"), node(pool, tmp_path / "b")
    await a.join()
    await b.join()
    prefix = f"{redis_prefix}{secrets.token_hex(3)}:"
    node_a = billing_of(pool, redis, prefix, tmp_path / "a", a)
    node_b = billing_of(pool, redis, prefix, tmp_path / "b", b)
    account = await new_account(pool, nanos=USD)
    held = [rid() for _ in range(3)]
    for request_id in held:
        await node_a.hold(request_id, account.key_id, MODEL, 1000, 1000, "::1")
    lease = await call(
        pool,
        LeaseOpen(
            account_id=account.id,
            owner=a.id,
            want_nanos=100_000_000,
            min_nanos=1,
            max_pct=50,
            ttl_seconds=3600,
        ),
    )
    assert lease is not None
    assert await balances(pool, account.id) == (USD, 3 * HOLD + 100_000_000)

    await b.beat()
    assert await node_b.sweep() == 0  # A beat less than a window ago
    await asyncio.sleep(1.3)  # A beats no more: dead
    await b.beat()
    assert await node_b.sweep() == 4  # three holds and the lease
    assert await balances(pool, account.id) == (USD, 0)
    assert await statuses(pool, held) == ["expired"] * 3
    assert (
        await pool.fetchval("SELECT status FROM billing_leases WHERE id = $1", lease.lease_id)
        == "expired"
    )

    # A was only paused: it comes back and finishes its requests.
    revived: list[bool] = []
    a.on_revived(lambda: revived.append(True))
    await a.beat()
    assert revived == [True]  # its leases are dropped: the sweeper may have closed them
    # sonnet-4-5: 1000 in x $3 + 500 out x $15 = $0.0105
    assert await node_a.settle(held[0], Usage(1000, 500)) == 10_500_000
    assert await node_a.settle(held[0], Usage(1000, 500)) == 10_500_000  # once
    await node_a.release(held[1])
    assert await balances(pool, account.id) == (USD - 10_500_000, 0)
    await node_b.settle(held[2], Usage(0, 100))  # a journal replayed on B, say: $0.0015
    assert await balances(pool, account.id) == (USD - 12_000_000, 0)
    charged = await pool.fetchval(
        "SELECT -sum(amount_nanos) FROM ledger WHERE request_id = ANY ($1)", held
    )
    assert charged == 12_000_000


async def test_a_node_that_cannot_beat_stops_using_its_leases(
    pool: asyncpg.Pool, redis: Redis, redis_prefix: str, model_catalog: ModelCatalog, tmp_path
) -> None:
    """Before the window can declare it dead, a node whose heartbeat has not landed
    admits nothing against its leases (the sweeper may close them); when its heartbeat
    lands after such a gap it drops them."""
    a = node(pool, tmp_path, dead_after=2.0)  # usable 1.8 s after a beat
    await a.join()
    tasks = TaskTracker()
    credit = Credit(pool, tasks, owner=a.id, usable_until=a.usable_until)
    a.on_revived(credit.drop_all)
    account = await new_account(pool, nanos=USD)
    try:
        assert credit.take(account.id, 1000) is None  # none yet: one is asked for
        await asyncio.wait_for(tasks.settle(5), 6)
        await a.beat()
        assert credit.take(account.id, 1000) is not None
        await asyncio.sleep(1.9)  # no beat for longer than the window less one interval
        assert credit.take(account.id, 1000) is None
        await a.beat()  # back after the gap
        assert credit.leased(account.id) is None
    finally:
        await tasks.drain(5)
        for row in await pool.fetch(
            "SELECT id FROM billing_leases WHERE owner = $1 AND status = 'open'", a.id
        ):
            await pool.execute("SELECT billing.lease_close($1)", row["id"])


async def test_a_restarted_node_retires_its_dead_predecessor_at_once(
    pool: asyncpg.Pool, redis: Redis, redis_prefix: str, model_catalog: ModelCatalog, tmp_path
) -> None:
    """The slot lock of a dead process is free, so its successor on the same data dir
    knows it is dead and its money comes back at the first sweep, within the window.
    A live process's slot is never taken."""
    prefix = f"{redis_prefix}{secrets.token_hex(3)}:"
    first = node(pool, tmp_path, dead_after=30)
    await first.join()
    assert first.predecessor is None
    account = await new_account(pool, nanos=USD)
    orphan = rid()
    await billing_of(pool, redis, prefix, tmp_path, first).hold(
        orphan, account.key_id, MODEL, 1000, 1000, "::1"
    )
    beside = node(pool, tmp_path, dead_after=30)  # a second live process: its own slot
    await beside.join()
    assert beside.predecessor is None
    first.close()  # the process dies: the kernel drops its lock

    second = node(pool, tmp_path, dead_after=30)
    await second.join()
    assert second.predecessor == first.id
    assert await billing_of(pool, redis, prefix, tmp_path, second).sweep() == 1
    assert await balances(pool, account.id) == (USD, 0)
    assert await statuses(pool, [orphan]) == ["expired"]
    second.close()
    beside.close()


async def test_a_restarted_gateway_replays_the_journal_before_it_admits(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    redis: Redis,
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    """A settlement journaled by the node before it stopped frees most of the account's
    balance; the gateway that starts next applies it before its first request, which
    is therefore not refused (402) for money that is free."""
    await reset_pool(db)
    config = make_config(redis_prefix=f"replay-{secrets.token_hex(4)}:", data_dir=tmp_path / "gw")
    customer = await make_customer(db, usd=0)
    await db.execute("SELECT billing.topup($1, 2500000, 'replay test')", customer.account_id)
    before = billing_of(pool, redis, config.redis_prefix, tmp_path, None)
    journaled = rid()
    # sonnet-4-5: 100 x $6 + 100 x $15 = $0.0021 of the $0.0025 held
    await before.hold(journaled, customer.key_id, MODEL, 100, 100, "::1")
    await before.journal.append(batch_element(SettleOp(journaled, Usage(10, 10))))

    gateway = await start_gateway(config)
    try:
        # worst case 50 x $15 + the estimate x $6: about $0.0008, free only once the
        # journaled settlement ($0.00018) gave the rest of its hold back
        async with anthropic.AsyncAnthropic(
            api_key=customer.key, base_url=gateway.url, max_retries=0
        ) as client:
            raw = await client.messages.with_raw_response.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
        assert raw.status_code == 200
    finally:
        await stop_gateway(gateway)
    assert await db.fetchval("SELECT count(*) FROM ledger WHERE request_id = $1", journaled) == 1
