"""The typed Python↔SQL billing contract (``money/contract.py``): every argument reaches
the SQL parameter of its name and unit, a settlement through the typed call costs the
hand-computed nanos, and journal elements (older nodes' included) read back as the
operations they were."""

from __future__ import annotations

import dataclasses
import secrets

import asyncpg
import pytest

from alicode_gw.money.billing import hold_amount
from alicode_gw.money.catalog import ModelCatalog, Prices
from alicode_gw.money.contract import (
    ApplyBatch,
    HoldOp,
    HoldOutcome,
    HoldResult,
    LeaseClose,
    LeaseGrow,
    LeaseOpen,
    LeaseRenew,
    LeaseShrink,
    MalformedOperation,
    ReleaseOp,
    ReleaseOutcome,
    ReleaseResult,
    SettleLeasedOp,
    SettleOp,
    SettleOutcome,
    SettleResult,
    Usage,
    batch_element,
    batch_op,
    call,
    sql_call,
)
from tests.support.money import USD, balances, new_account

# Five prices and five counts, all different, so that any two swapped change the cost;
# the input price's odd micro makes the sum end in a fraction of a nano.
PRICES = Prices(
    input=3_000_001,
    output=15_000_000,
    cache_write_5m=3_750_000,
    cache_write_1h=6_000_000,
    cache_read=300_000,
    batch_discount_pct=0,
)
USAGE = Usage(
    input_tokens=1001,
    output_tokens=500,
    cache_creation_5m=2000,
    cache_creation_1h=3000,
    cache_read=10_000,
)
# pico-USD: 1001 x 3 000 001 = 3 003 001 001
#           + 500 x 15 000 000 = 7 500 000 000
#           + 2000 x 3 750 000 = 7 500 000 000
#           + 3000 x 6 000 000 = 18 000 000 000
#           + 10 000 x 300 000 = 3 000 000 000
#           = 39 003 001 001 pico = 39 003 001.001 nanos -> one ceil -> 39 003 002
COST_NANOS = 39_003_002


def rid() -> str:
    return f"req_{secrets.token_hex(8)}"


def test_a_call_names_every_argument() -> None:
    statement = sql_call(
        LeaseOpen(
            account_id=7, owner="node", want_nanos=300, min_nanos=20, max_pct=50, ttl_seconds=60
        )
    )
    assert statement.sql == (
        "SELECT * FROM billing.lease_open(p_account_id => $1, p_owner => $2,"
        " p_want_nanos => $3, p_min_nanos => $4, p_max_pct => $5, p_ttl_seconds => $6)"
    )
    assert statement.args == (7, "node", 300, 20, 50, 60)


async def test_a_leased_settlement_through_the_typed_call_costs_the_hand_computed_nanos(
    pool: asyncpg.Pool,
) -> None:
    account = await new_account(pool, nanos=10 * USD)
    grant = await call(
        pool,
        LeaseOpen(
            account_id=account.id,
            owner="contract-test",
            want_nanos=USD,
            min_nanos=1,
            max_pct=50,
            ttl_seconds=60,
        ),
    )
    assert grant is not None and grant.amount_nanos == USD
    assert PRICES.cost_nanos(**USAGE.counts()) == COST_NANOS  # Python's copy of the rule
    request_id = rid()
    settle = SettleLeasedOp(
        request_id=request_id,
        lease_id=grant.lease_id,
        key_id=account.key_id,
        requested_model="claude-sonnet-4-5",
        model="claude-sonnet-4-5",
        client_ip="198.51.100.9",
        reserved_nanos=100_000_000,
        prices=PRICES,
        usage=USAGE,
        estimated=True,
    )
    (result,) = await call(pool, ApplyBatch((settle,), ttl_seconds=60))
    assert result == SettleResult(SettleOutcome.SETTLED, COST_NANOS, None)
    row = await pool.fetchrow("SELECT * FROM ledger WHERE request_id = $1", request_id)
    assert (row["cost_nanos"], row["amount_nanos"], row["status"]) == (
        COST_NANOS,
        -COST_NANOS,
        "estimated",
    )
    assert (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_creation_5m"],
        row["cache_creation_1h"],
        row["cache_read"],
    ) == (1001, 500, 2000, 3000, 10_000)
    assert (row["client_ip"], row["key_id"]) == ("198.51.100.9", account.key_id)
    # The charge came out of the lease (it held the request's worst case).
    assert await balances(pool, account.id) == (10 * USD - COST_NANOS, USD - COST_NANOS)
    (again,) = await call(pool, ApplyBatch((settle,), ttl_seconds=60))
    assert again == SettleResult(SettleOutcome.ALREADY_SETTLED, COST_NANOS, None)
    assert await call(pool, LeaseClose(grant.lease_id)) == USD - COST_NANOS


async def test_hold_settle_release_through_the_typed_batch(
    pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    account = await new_account(pool, nanos=USD)
    model = "claude-haiku-4-5"
    info = model_catalog.resolve(model)
    assert info is not None
    held, released = rid(), rid()
    holds = tuple(HoldOp(r, account.key_id, model, 1000, 2000, "::1") for r in (held, released))
    results = await call(pool, ApplyBatch(holds, ttl_seconds=60))
    worst = hold_amount(info.prices, 1000, 2000)  # haiku: 1000 x $2 (1 h write) + 2000 x $5
    assert worst == 12_000_000
    snapshot = dataclasses.replace(info.prices, batch_discount_pct=0)  # not a batch
    assert results == [HoldResult(HoldOutcome.HELD, model, worst, snapshot)] * 2
    usage = Usage(input_tokens=1000, output_tokens=100)  # $0.001 + $0.0005
    done = await call(
        pool,
        ApplyBatch((SettleOp(held, usage), ReleaseOp(released), ReleaseOp(rid())), ttl_seconds=60),
    )
    assert done == [
        SettleResult(SettleOutcome.SETTLED, 1_500_000, None),
        ReleaseResult(ReleaseOutcome.RELEASED),
        ReleaseResult(ReleaseOutcome.UNKNOWN),
    ]
    assert await balances(pool, account.id) == (USD - 1_500_000, 0)


async def test_lease_calls_read_their_typed_results(pool: asyncpg.Pool) -> None:
    account = await new_account(pool, nanos=10 * USD)
    assert (
        await call(
            pool,
            LeaseOpen(
                account_id=account.id,
                owner="contract-test",
                want_nanos=USD,
                min_nanos=20 * USD,  # more than half the balance: nothing leased
                max_pct=50,
                ttl_seconds=60,
            ),
        )
        is None
    )
    grant = await call(
        pool,
        LeaseOpen(
            account_id=account.id,
            owner="contract-test",
            want_nanos=USD,
            min_nanos=1,
            max_pct=50,
            ttl_seconds=60,
        ),
    )
    assert grant is not None
    grow = LeaseGrow(lease_id=grant.lease_id, add_nanos=2 * USD, max_pct=50, ttl_seconds=60)
    assert await call(pool, grow) == 2 * USD
    assert await call(pool, LeaseShrink(lease_id=grant.lease_id, amount_nanos=USD)) == USD
    assert await call(pool, LeaseRenew((grant.lease_id, -1), ttl_seconds=60)) == {
        grant.lease_id: 2 * USD
    }
    assert await call(pool, LeaseClose(grant.lease_id)) == 2 * USD
    assert await call(pool, grow) is None  # no longer open
    assert await balances(pool, account.id) == (10 * USD, 0)


OPS = [
    HoldOp(rid(), 1, "claude-sonnet-4-5", 100, 200, "::1", batch=True),
    SettleOp(rid(), USAGE, estimated=True),
    SettleLeasedOp(rid(), 3, 4, "gpt-4o", "claude-sonnet-4-5", "::1", 500, PRICES, USAGE),
    ReleaseOp(rid()),
    SettleOp(rid(), USAGE, hit_pct=25),  # a response cache hit
    SettleLeasedOp(rid(), 3, 4, "m", "claude-sonnet-4-5", "::1", 500, PRICES, USAGE, hit_pct=0),
]


@pytest.mark.parametrize("op", OPS, ids=[f"{op.KIND}-{i}" for i, op in enumerate(OPS)])
def test_an_operation_reads_back_from_its_journal_element(op: object) -> None:
    assert batch_op(batch_element(op)) == op  # type: ignore[arg-type]


def test_journal_elements_of_older_nodes_read_back() -> None:
    """As ``Billing`` journaled them before the contract was typed (dicts merged with
    ``update``)."""
    settle_leased = {
        "op": "settle_leased", "request_id": "req_1", "estimated": False,
        "input_tokens": 1001, "output_tokens": 500, "cache_creation_5m": 2000,
        "cache_creation_1h": 3000, "cache_read": 10000, "key_id": 4,
        "requested_model": "gpt-4o", "client_ip": "::1", "lease_id": 3,
        "model": "claude-sonnet-4-5", "reserved": 500, "input_price": 3000001,
        "output_price": 15000000, "cache_write_5m_price": 3750000,
        "cache_write_1h_price": 6000000, "cache_read_price": 300000,
    }  # fmt: skip
    assert batch_op(settle_leased) == SettleLeasedOp(
        "req_1", 3, 4, "gpt-4o", "claude-sonnet-4-5", "::1", 500, PRICES, USAGE
    )
    settle = {"op": "settle", "request_id": "req_2", "estimated": True, "input_tokens": 7,
              "output_tokens": 5, "cache_creation_5m": 0, "cache_creation_1h": 0,
              "cache_read": 0}  # fmt: skip
    assert batch_op(settle) == SettleOp("req_2", Usage(7, 5), estimated=True)
    assert batch_op({"op": "release", "request_id": "req_3"}) == ReleaseOp("req_3")
    with pytest.raises(MalformedOperation):
        batch_op({"op": "refund everything", "request_id": "req_4"})
    with pytest.raises(MalformedOperation):
        batch_op({"op": "settle"})
