"""Group commit of holds, settlements and releases (``billing.apply_batch``): mixed
batches keep each operation's own outcome, a failing batch falls back to one call per
operation, and a hold nobody waits for any more is given back."""

from __future__ import annotations

import asyncio
import json
import secrets

import asyncpg

from alicode_gw.errors import InsufficientCreditsError
from alicode_gw.money.billing import Billing
from alicode_gw.money.contract import HoldOp, SettleOp, SettleOutcome, SettleResult, Usage
from alicode_gw.tasks import TaskTracker
from tests.support.money import USD, balances, new_account

MODEL = "claude-haiku-4-5"


def rid() -> str:
    return f"req_{secrets.token_hex(8)}"


async def test_one_batch_mixes_accounts_and_operations(
    billing: Billing, pool: asyncpg.Pool
) -> None:
    rich, poor = await new_account(pool, nanos=USD), await new_account(pool, nanos=1000)
    first = rid()
    await billing.hold(first, rich.key_id, MODEL, 100, 100, "::1")
    trips = billing.round_trips
    second, third = rid(), rid()
    outcomes = await asyncio.gather(
        billing.settle(first, Usage(100, 10)),
        billing.hold(second, rich.key_id, MODEL, 100, 100, "::1"),
        billing.hold(third, poor.key_id, MODEL, 100, 100, "::1"),
        billing.release(second),  # after its hold: the batch keeps submission order...
        return_exceptions=True,
    )
    assert billing.round_trips == trips + 1  # one round trip for all four
    # haiku-4-5: 100 in x $1 + 10 out x $5 = $0.00015
    assert outcomes[0] == 150_000
    assert outcomes[1].model == MODEL  # type: ignore[union-attr]
    assert isinstance(outcomes[2], InsufficientCreditsError)
    # ...except that settlements and releases go before holds: this release found no
    # hold yet ('unknown', logged) and the hold then stayed open.
    status = await pool.fetchval("SELECT status FROM billing_holds WHERE request_id = $1", second)
    assert status == "held"
    await billing.release(second)
    assert await balances(pool, rich.id) == (USD - 150_000, 0)
    assert await balances(pool, poor.id) == (1000, 0)


async def test_a_failing_batch_falls_back_to_one_call_per_operation(
    billing: Billing, pool: asyncpg.Pool
) -> None:
    account = await new_account(pool, nanos=USD)
    good = rid()
    await billing.hold(good, account.key_id, MODEL, 100, 100, "::1")
    outcomes = await billing._run_batch(
        [
            SettleOp(good, Usage(1000)),
            # Beyond bigint: the database refuses the whole batch.
            HoldOp(rid(), account.key_id, MODEL, 2**63, 100, "::1"),
        ]
    )
    assert outcomes[0] == SettleResult(SettleOutcome.SETTLED, 1_000_000, None)
    assert isinstance(outcomes[1], asyncpg.NumericValueOutOfRangeError)
    assert await balances(pool, account.id) == (USD - 1_000_000, 0)


async def test_a_hold_whose_requester_left_is_released(
    pool: asyncpg.Pool, redis, redis_prefix: str, tmp_path
) -> None:
    tasks = TaskTracker()
    billing = Billing(pool, redis, redis_prefix=redis_prefix, data_dir=tmp_path, tasks=tasks)
    account = await new_account(pool, nanos=USD)
    request_id = rid()
    waiting = asyncio.ensure_future(
        billing.hold(request_id, account.key_id, MODEL, 100, 100, "::1")
    )
    await asyncio.sleep(0)  # the hold is queued and its flush about to start
    waiting.cancel()
    await tasks.drain(10)  # the flush, then the release it triggers
    status = await pool.fetchval(
        "SELECT status FROM billing_holds WHERE request_id = $1", request_id
    )
    assert status == "released"
    assert await balances(pool, account.id) == (USD, 0)


async def test_settling_an_expired_hold_beside_the_sweeper_never_deadlocks(
    pool: asyncpg.Pool,
) -> None:
    """The sweeper locks holds, then accounts; a batch locks the holds it settles before
    any account, so the two wait for each other at most in a line, never in a cycle."""
    first, second = await new_account(pool, nanos=USD), await new_account(pool, nanos=USD)
    held = []
    for account in (first, second):
        request_id = rid()
        await pool.fetchrow(
            "SELECT * FROM billing.hold($1, $2, $3, 100, 100, '::1', false, 3600)",
            request_id,
            account.key_id,
            MODEL,
        )
        held.append(request_id)
    await pool.execute(
        "UPDATE billing_holds SET expires_at = now() - interval '1 second'"
        " WHERE request_id = ANY($1)",
        held,
    )
    settle = {"i": 0, "op": "settle", "request_id": held[1], "estimated": False,
              "input_tokens": 100, "output_tokens": 10, "cache_creation_5m": 0,
              "cache_creation_1h": 0, "cache_read": 0}  # fmt: skip
    async with pool.acquire() as blocker, pool.acquire() as sweeper, pool.acquire() as batch:
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", first.id)
            sweeping = asyncio.ensure_future(sweeper.fetchval("SELECT billing.expire_holds()"))
            await asyncio.sleep(0.3)  # the sweeper holds both holds, waits for `first`
            settling = asyncio.ensure_future(
                batch.fetch(
                    "SELECT * FROM billing.apply_batch($1::jsonb, 3600)", json.dumps([settle])
                )
            )
            await asyncio.sleep(0.3)
        assert await sweeping >= 2
        (row,) = await settling
    assert row["outcome"] == "settled"  # a late settlement of an expired hold is billed
    # haiku-4-5: 100 in x $1 + 10 out x $5 = $0.00015
    assert await balances(pool, second.id) == (USD - 150_000, 0)


async def test_a_settlement_the_database_refuses_is_journaled_not_lost(
    pool: asyncpg.Pool, database_url: str, redis, redis_prefix: str, tmp_path
) -> None:
    """Not an outage but a refusal (here a statement timeout while another transaction
    holds the account): the settlement goes to the journal and is applied later."""
    impatient = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, server_settings={"statement_timeout": "200"}
    )
    assert impatient is not None
    prefix = f"{redis_prefix}refused-{secrets.token_hex(3)}:"
    billing = Billing(impatient, redis, redis_prefix=prefix, data_dir=tmp_path)
    account = await new_account(pool, nanos=USD)
    request_id = rid()
    try:
        await billing.hold(request_id, account.key_id, MODEL, 100, 100, "::1")
        async with pool.acquire() as blocker, blocker.transaction():
            await blocker.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account.id)
            # provisional: the cost at the hold's snapshot (100 in x $1 + 10 out x $5)
            assert await billing.settle(request_id, Usage(100, 10)) == 150_000
        assert await billing.journal_length() == 1
        assert await billing.replay_journal() == 1
        assert await balances(pool, account.id) == (USD - 150_000, 0)
    finally:
        await impatient.close()
