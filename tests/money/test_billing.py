"""Billing against the real PostgreSQL functions: prices checked against hand-computed
figures, holds that can never overdraw, settle exactly once, release, the sweeper.
Every test ends with ``alicode-gw audit`` finding balance == top-ups - charges."""

from __future__ import annotations

import asyncio
import json
import random
import secrets

import asyncpg
import pytest
from redis.asyncio import Redis

from alicode_gw.errors import InsufficientCreditsError, InvalidRequestError, RateLimitError
from alicode_gw.identity import auth
from alicode_gw.money import catalog, ledger
from alicode_gw.money.billing import Billing
from alicode_gw.money.catalog import ModelCatalog
from alicode_gw.money.contract import Usage
from alicode_gw.money.usd import format_usd, parse_usd
from tests.support.money import USD, balances, new_account


def rid() -> str:
    return f"req_{secrets.token_hex(8)}"


# --- money as integers ----------------------------------------------------------------------


def test_format_and_parse_usd_are_exact() -> None:
    assert format_usd(0) == "0.00"
    assert format_usd(5 * USD) == "5.00"
    assert format_usd(12_500_000_000) == "12.50"
    assert format_usd(39_000_000) == "0.039"
    assert format_usd(1) == "0.000000001"
    assert format_usd(-1_500_000_000) == "-1.50"
    assert parse_usd("5") == 5 * USD
    assert parse_usd("0.039") == 39_000_000
    assert parse_usd("0.000000001") == 1
    assert parse_usd("1.5000000000") == 1_500_000_000
    for value in (0, 1, 999_999_999, 123_456_789_012, -7):
        assert parse_usd(format_usd(value)) == value
    for bad in ("0.0000000001", "abc", "NaN", "Infinity", ""):
        with pytest.raises(ValueError):
            parse_usd(bad)


# --- the price table --------------------------------------------------------------------------

# Anthropic's official list prices in USD per million tokens:
# (input, output, 5m cache write, 1h cache write, cache read).
OFFICIAL = {
    "claude-haiku-4-5": ("1.00", "5.00", "1.25", "2.00", "0.10"),
    "claude-sonnet-4-5": ("3.00", "15.00", "3.75", "6.00", "0.30"),
    "claude-sonnet-4-6": ("3.00", "15.00", "3.75", "6.00", "0.30"),
    "claude-opus-4-5": ("5.00", "25.00", "6.25", "10.00", "0.50"),
    "claude-opus-4-6": ("5.00", "25.00", "6.25", "10.00", "0.50"),
    "claude-opus-4-7": ("5.00", "25.00", "6.25", "10.00", "0.50"),
}
ALIASES = {
    "claude-3-7-sonnet-latest": "claude-sonnet-4-5",
    "claude-3-5-haiku-latest": "claude-haiku-4-5",
    "claude-opus-4-1": "claude-opus-4-5",
    "gpt-4o": "claude-sonnet-4-5",
    "gpt-4-turbo": "claude-sonnet-4-5",
}


async def test_seeded_price_table(model_catalog: ModelCatalog) -> None:
    for model, prices in OFFICIAL.items():
        info = model_catalog.resolve(model)
        assert info is not None and not info.is_alias and info.target == model
        p = info.prices
        shown = tuple(
            catalog.format_price(v)
            for v in (p.input, p.output, p.cache_write_5m, p.cache_write_1h, p.cache_read)
        )
        assert shown == prices, model
        assert p.batch_discount_pct == 50
        # the multipliers of the input price
        assert p.cache_write_5m * 100 == p.input * 125
        assert p.cache_write_1h == 2 * p.input
        assert p.cache_read * 10 == p.input
    for alias, target in ALIASES.items():
        info = model_catalog.resolve(alias)
        assert info is not None and info.is_alias and info.target == target
        assert info.prices == model_catalog.resolve(target).prices  # type: ignore[union-attr]
    assert model_catalog.resolve("claude-mythos-9") is None
    # A family's prefix followed by what no model id holds is no model.
    for name in ("claude-sonnet-4-\x00", "claude-sonnet-4-\ud800", "claude-sonnet-4-é"):
        assert model_catalog.resolve(name) is None
    assert model_catalog.resolve("claude-sonnet-4-20990101") is not None
    names = [m.id for m in model_catalog.all()]
    assert set(OFFICIAL) | set(ALIASES) <= set(names)


# --- pricing, against hand-computed figures ---------------------------------------------------

# Each case: model, usage, batch, expected cost in nano-USD worked out by hand from the
# price table ($/MTok x tokens / 1e6 = USD; x 1e9 = nanos), then rounded up once.
PRICING_CASES = [
    # sonnet-4-5: 1000 in x $3 + 500 out x $15 = $0.003 + $0.0075
    ("plain", "claude-sonnet-4-5", Usage(1000, 500), False, 10_500_000),
    # 10 000 cache-read tokens x $0.30 = $0.003
    ("cache read", "claude-sonnet-4-5", Usage(cache_read=10_000), False, 3_000_000),
    # 2000 5-minute cache-write tokens x $3.75 = $0.0075
    ("cache write 5m", "claude-sonnet-4-5", Usage(cache_creation_5m=2000), False, 7_500_000),
    # 3000 1-hour cache-write tokens x $6.00 = $0.018
    ("cache write 1h", "claude-sonnet-4-5", Usage(cache_creation_1h=3000), False, 18_000_000),
    # all kinds: 0.003 + 0.0075 + 0.0075 + 0.018 + 0.003 = $0.039
    ("all kinds", "claude-sonnet-4-5", Usage(1000, 500, 2000, 3000, 10_000), False, 39_000_000),
    # the same in a batch: 50 % off everything = $0.0195
    ("batch", "claude-sonnet-4-5", Usage(1000, 500, 2000, 3000, 10_000), True, 19_500_000),
    # opus-4-7 batch: (2000 x $5 + 1000 x $25) / 2 = $0.0175
    ("batch opus", "claude-opus-4-7", Usage(2000, 1000), True, 17_500_000),
    # haiku: 7 cache-read tokens x $0.10 = $0.0000007 = 700 nanos
    ("tiny read", "claude-haiku-4-5", Usage(cache_read=7), False, 700),
    # haiku: 1 output token x $5, batch: $0.0000025 = 2500 nanos
    ("one token batch", "claude-haiku-4-5", Usage(output_tokens=1), True, 2500),
    # an alias is billed as its target: gpt-4o = sonnet-4-5
    ("alias", "gpt-4o", Usage(1000, 500), False, 10_500_000),
]


@pytest.mark.parametrize(
    ("model", "usage", "batch", "expected"),
    [case[1:] for case in PRICING_CASES],
    ids=[case[0] for case in PRICING_CASES],
)
async def test_cost_matches_hand_computed_figure(
    billing: Billing,
    pool: asyncpg.Pool,
    model_catalog: ModelCatalog,
    model: str,
    usage: Usage,
    batch: bool,
    expected: int,
) -> None:
    account = await new_account(pool, nanos=10 * USD)
    request_id = rid()
    hold = await billing.hold(
        request_id, account.key_id, model, 5000, 1000, "203.0.113.7", batch=batch
    )
    assert hold.model == model_catalog.resolve(model).target  # type: ignore[union-attr]
    assert await billing.settle(request_id, usage) == expected
    assert await balances(pool, account.id) == (10 * USD - expected, 0)
    row = await pool.fetchrow("SELECT * FROM ledger WHERE request_id = $1", request_id)
    assert row["amount_nanos"] == -expected and row["cost_nanos"] == expected
    assert row["kind"] == "charge" and row["status"] == "complete"
    assert row["batch"] is batch and row["model"] == hold.model and row["requested_model"] == model
    assert row["client_ip"] == "203.0.113.7" and row["key_id"] == account.key_id
    assert (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_creation_5m"],
        row["cache_creation_1h"],
        row["cache_read"],
    ) == (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_5m,
        usage.cache_creation_1h,
        usage.cache_read,
    )
    # the in-process mirror (used for a journaled settlement's provisional figure) agrees
    prices = model_catalog.resolve(model).prices  # type: ignore[union-attr]
    fields = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_5m": usage.cache_creation_5m,
        "cache_creation_1h": usage.cache_creation_1h,
        "cache_read": usage.cache_read,
    }
    assert prices.cost_nanos(**fields, batch=batch) == expected
    assert hold.cost_nanos(usage) == expected  # and so does the hold's price snapshot


async def test_rounding_is_one_ceil_per_request(
    billing: Billing, pool: asyncpg.Pool, model_catalog: ModelCatalog
) -> None:
    """A model priced at $0.000003 / MTok: 333 output tokens cost 999 pico-USD = 0.999
    nanos, rounded up once to 1; in a batch 499.5 pico-USD, still 1 nano; 1500 tokens
    cost 4.5 nanos -> 5 (never per token, which would give 1500 x ceil(0.003) = 1500)."""
    model = f"test-model-{secrets.token_hex(3)}"
    async with pool.acquire() as conn:
        await catalog.set_price(
            conn,
            model,
            input_price=catalog.parse_price("0.000001"),
            output_price=catalog.parse_price("0.000003"),
        )
    account = await new_account(pool, nanos=USD)
    spent = 0
    for usage, batch, expected in (
        (Usage(output_tokens=333), False, 1),
        (Usage(output_tokens=333), True, 1),
        (Usage(output_tokens=1500), False, 5),
        (Usage(input_tokens=1, output_tokens=0), False, 1),
        (Usage(input_tokens=0), False, 0),
    ):
        request_id = rid()
        await billing.hold(request_id, account.key_id, model, 10, 10, "::1", batch=batch)
        assert await billing.settle(request_id, usage) == expected, (usage, batch)
        spent += expected
    assert await balances(pool, account.id) == (USD - spent, 0)


async def test_hold_reserves_the_worst_case(billing: Billing, pool: asyncpg.Pool) -> None:
    """Hold = estimated input at the dearest input-side rate (a 1-hour cache write) plus
    max_tokens of output: sonnet-4-5, 1000 in x $6 + 2000 out x $15 = $0.036."""
    account = await new_account(pool, nanos=USD)
    first, second = rid(), rid()
    hold = await billing.hold(first, account.key_id, "claude-sonnet-4-5", 1000, 2000, "::1")
    assert hold.amount_nanos == 36_000_000
    assert await balances(pool, account.id) == (USD, 36_000_000)
    batch = await billing.hold(
        second, account.key_id, "claude-sonnet-4-5", 1000, 2000, "::1", batch=True
    )
    assert batch.amount_nanos == 18_000_000
    assert await balances(pool, account.id) == (USD, 54_000_000)
    # holding the same request id again changes nothing
    again = await billing.hold(first, account.key_id, "claude-sonnet-4-5", 1000, 2000, "::1")
    assert again.amount_nanos == 36_000_000
    assert await balances(pool, account.id) == (USD, 54_000_000)
    await billing.settle(first, Usage(1000, 100))  # $0.003 + $0.0015
    await billing.release(second)
    assert await balances(pool, account.id) == (USD - 4_500_000, 0)


async def test_refusals(billing: Billing, pool: asyncpg.Pool) -> None:
    account = await new_account(pool, nanos=35_999_999)  # one nano short of the hold above
    with pytest.raises(InsufficientCreditsError) as refused:
        await billing.hold(rid(), account.key_id, "claude-sonnet-4-5", 1000, 2000, "::1")
    assert refused.value.status == 402 and refused.value.error_type == "insufficient_credits"
    with pytest.raises(InvalidRequestError):
        await billing.hold(rid(), account.key_id, "claude-mythos-9", 1, 1, "::1")
    empty = await new_account(pool)
    with pytest.raises(InsufficientCreditsError):
        await billing.hold(rid(), empty.key_id, "claude-haiku-4-5", 1, 1, "::1")
    assert await balances(pool, account.id) == (35_999_999, 0)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM billing_holds WHERE account_id = ANY($1)", [account.id, empty.id]
        )
        == 0
    )
    # one nano more and it fits
    async with pool.acquire() as conn:
        await ledger.topup(conn, account.email, 1, None)
    request_id = rid()
    await billing.hold(request_id, account.key_id, "claude-sonnet-4-5", 1000, 2000, "::1")
    await billing.release(request_id)


# --- concurrency ---------------------------------------------------------------------------

# haiku-4-5, 1000 estimated input, max_tokens 1000: hold = 1000 x $2 + 1000 x $5 = $0.007
HOLD_NANOS = 7_000_000
# settled at 1000 in x $1 + 200 out x $5 = $0.002
USAGE = Usage(1000, 200)
COST_NANOS = 2_000_000


async def test_500_concurrent_holds_never_exceed_the_balance(
    billing: Billing, pool: asyncpg.Pool
) -> None:
    """$1 covers exactly 142 holds of $0.007: of 500 concurrent holds exactly 142 pass,
    358 get 402, and the held amount never exceeds the balance."""
    account = await new_account(pool, nanos=USD)
    ids = [rid() for _ in range(500)]

    async def one(request_id: str) -> bool:
        try:
            await billing.hold(request_id, account.key_id, "claude-haiku-4-5", 1000, 1000, "::1")
        except InsufficientCreditsError:
            return False
        return True

    outcome = await asyncio.gather(*(one(r) for r in ids))
    held = [r for r, ok in zip(ids, outcome, strict=True) if ok]
    assert len(held) == USD // HOLD_NANOS == 142
    assert await balances(pool, account.id) == (USD, 142 * HOLD_NANOS)
    costs = await asyncio.gather(*(billing.settle(r, USAGE) for r in held))
    assert costs == [COST_NANOS] * 142
    assert await balances(pool, account.id) == (USD - 142 * COST_NANOS, 0)
    assert (
        await pool.fetchval("SELECT count(*) FROM ledger WHERE account_id = $1", account.id) == 143
    )


async def test_500_concurrent_requests_hold_then_settle(
    billing: Billing, pool: asyncpg.Pool
) -> None:
    """500 requests each hold, wait a moment (the upstream call), settle or release.
    A monitor samples the account meanwhile: balance and available never go below 0;
    the refused got 402; in the end balance == top-up - sum of the charges."""
    top_up = 300_000_000  # covers 150 settled requests at most
    account = await new_account(pool, nanos=top_up)
    rng = random.Random(4)
    plans = [(rid(), rng.random() * 0.05, rng.random() < 0.1) for _ in range(500)]
    done = asyncio.Event()
    samples: list[tuple[int, int]] = []

    async def monitor() -> None:
        while not done.is_set():
            samples.append(await balances(pool, account.id))
            await asyncio.sleep(0.005)

    async def request(request_id: str, delay: float, fails: bool) -> str:
        try:
            await billing.hold(request_id, account.key_id, "claude-haiku-4-5", 1000, 1000, "::1")
        except InsufficientCreditsError as exc:
            assert exc.status == 402
            return "refused"
        await asyncio.sleep(delay)
        if fails:
            await billing.release(request_id)
            return "released"
        assert await billing.settle(request_id, USAGE) == COST_NANOS
        return "settled"

    watcher = asyncio.create_task(monitor())
    results = await asyncio.gather(*(request(*plan) for plan in plans))
    done.set()
    await watcher
    settled = results.count("settled")
    assert results.count("refused") > 0 and settled > 0
    assert settled + results.count("released") + results.count("refused") == 500
    assert samples and all(bal >= 0 and bal - held >= 0 for bal, held in samples)
    assert await balances(pool, account.id) == (top_up - settled * COST_NANOS, 0)
    charges = await pool.fetchval(
        "SELECT -sum(amount_nanos) FROM ledger WHERE account_id = $1 AND kind = 'charge'",
        account.id,
    )
    assert charges == settled * COST_NANOS
    # group commit: the 1000-odd operations shared far fewer database round trips
    assert billing.round_trips < 500


# --- exactly once -----------------------------------------------------------------------------


async def test_settling_twice_changes_nothing(billing: Billing, pool: asyncpg.Pool) -> None:
    account = await new_account(pool, nanos=USD)
    request_id = rid()
    await billing.hold(request_id, account.key_id, "claude-sonnet-4-5", 1000, 1000, "::1")
    first = await billing.settle(request_id, Usage(1000, 500))
    assert first == 10_500_000
    # again, with other numbers, and twice concurrently: nothing changes
    assert await billing.settle(request_id, Usage(99_999, 99_999)) == first
    assert await asyncio.gather(
        billing.settle(request_id, Usage(1, 1)), billing.settle(request_id, Usage(2, 2))
    ) == [first, first]
    await billing.release(request_id)  # too late: it was settled
    assert await balances(pool, account.id) == (USD - first, 0)
    rows = await pool.fetch("SELECT amount_nanos FROM ledger WHERE request_id = $1", request_id)
    assert [r["amount_nanos"] for r in rows] == [-first]
    spent = await pool.fetchval("SELECT spent_nanos FROM api_keys WHERE id = $1", account.key_id)
    assert spent == first


async def test_concurrent_first_settles_bill_once(billing: Billing, pool: asyncpg.Pool) -> None:
    account = await new_account(pool, nanos=USD)
    request_id = rid()
    await billing.hold(request_id, account.key_id, "claude-haiku-4-5", 10, 10, "::1")
    costs = await asyncio.gather(*(billing.settle(request_id, Usage(1000)) for _ in range(20)))
    assert costs == [1_000_000] * 20
    assert await balances(pool, account.id) == (USD - 1_000_000, 0)


async def test_release_costs_nothing(billing: Billing, pool: asyncpg.Pool) -> None:
    account = await new_account(pool, nanos=USD)
    request_id = rid()
    await billing.hold(request_id, account.key_id, "claude-opus-4-7", 1000, 4000, "::1")
    assert (await balances(pool, account.id))[1] > 0
    await billing.release(request_id)
    await billing.release(request_id)
    assert await billing.settle(request_id, Usage(1000, 1000)) == 0  # released: not billed
    assert await balances(pool, account.id) == (USD, 0)
    assert await pool.fetchval("SELECT count(*) FROM ledger WHERE request_id = $1", request_id) == 0


async def test_crash_between_hold_and_settle(
    pool: asyncpg.Pool, redis: Redis, redis_prefix: str, model_catalog: ModelCatalog, tmp_path
) -> None:
    """Node A holds and dies (never settles). Its hold expires; node B's sweeper gives the
    reservation back. The account is whole, nothing is billed, the books add up."""
    node_a = Billing(pool, redis, redis_prefix=redis_prefix, data_dir=tmp_path / "a", hold_ttl=0.5)
    node_b = Billing(pool, redis, redis_prefix=redis_prefix, data_dir=tmp_path / "b")
    account = await new_account(pool, nanos=USD)
    orphan, alive = rid(), rid()
    await node_a.hold(orphan, account.key_id, "claude-sonnet-4-5", 1000, 1000, "::1")
    await node_b.hold(alive, account.key_id, "claude-sonnet-4-5", 1000, 1000, "::1")
    del node_a  # the crash
    assert await node_b.sweep() == 0  # not expired yet
    assert await balances(pool, account.id) == (USD, 2 * 21_000_000)
    await asyncio.sleep(0.6)
    assert await node_b.sweep() == 1
    assert await balances(pool, account.id) == (USD, 21_000_000)
    status = await pool.fetchval("SELECT status FROM billing_holds WHERE request_id = $1", orphan)
    assert status == "expired"
    assert await node_b.sweep() == 0
    await node_b.settle(alive, Usage(100, 100))  # $0.0003 + $0.0015
    assert await balances(pool, account.id) == (USD - 1_800_000, 0)


async def test_late_settlement_of_an_expired_hold_is_billed_once(
    pool: asyncpg.Pool, redis: Redis, redis_prefix: str, tmp_path
) -> None:
    """A stream that outlives its hold (or a journaled settlement replayed late) is still
    billed, once, from the account's available balance."""
    node = Billing(pool, redis, redis_prefix=redis_prefix, data_dir=tmp_path, hold_ttl=0.2)
    account = await new_account(pool, nanos=USD)
    request_id = rid()
    await node.hold(request_id, account.key_id, "claude-haiku-4-5", 100, 100, "::1")
    await asyncio.sleep(0.3)
    assert await node.sweep() == 1
    assert await node.settle(request_id, Usage(1000)) == 1_000_000
    assert await node.settle(request_id, Usage(1000)) == 1_000_000
    assert await balances(pool, account.id) == (USD - 1_000_000, 0)


async def test_charge_never_overdraws(billing: Billing, pool: asyncpg.Pool) -> None:
    """Usage far above the estimate: the charge stops at what the account has outside
    its other holds; the rest is recorded as shortfall, and the balance stays >= 0."""
    account = await new_account(pool, nanos=100_000_000)  # $0.10
    big, other = rid(), rid()
    await billing.hold(big, account.key_id, "claude-haiku-4-5", 10, 10, "::1")  # $0.00007
    await billing.hold(other, account.key_id, "claude-haiku-4-5", 1000, 1000, "::1")  # $0.007
    # 1M input tokens = $1.00, far more than the $0.10 balance
    charged = await billing.settle(big, Usage(1_000_000))
    assert charged == 100_000_000 - 7_000_000
    assert await balances(pool, account.id) == (7_000_000, 7_000_000)
    row = await pool.fetchrow("SELECT * FROM ledger WHERE request_id = $1", big)
    assert row["cost_nanos"] == USD and row["shortfall_nanos"] == USD - charged
    assert await billing.settle(other, USAGE) == COST_NANOS
    assert await balances(pool, account.id) == (5_000_000, 0)


async def test_spend_cap_revokes_the_key_and_announces_it(
    billing: Billing, pool: asyncpg.Pool, redis: Redis
) -> None:
    account = await new_account(pool, nanos=USD, spend_cap_nanos=15_000_000)
    pubsub = redis.pubsub()
    await pubsub.subscribe(billing._prefix + auth.REVOKED_CHANNEL)
    try:
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        first, second = rid(), rid()
        await billing.hold(first, account.key_id, "claude-sonnet-4-5", 10, 10, "::1")
        await billing.hold(second, account.key_id, "claude-sonnet-4-5", 10, 10, "::1")
        await billing.settle(first, Usage(1000, 500))  # $0.0105 < cap
        key = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", account.key_id)
        assert key["status"] == "active" and key["spent_nanos"] == 10_500_000
        await billing.settle(second, Usage(1000, 500))  # $0.021 >= $0.015 cap
        key = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", account.key_id)
        assert key["status"] == "revoked" and key["revoked_reason"] == "spend cap reached"
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None
        assert account.public_id in json.loads(message["data"])["revoked"]
    finally:
        await pubsub.aclose()


async def test_spend_cap_counts_the_keys_open_holds(billing: Billing, pool: asyncpg.Pool) -> None:
    """A capped key's hold is refused (429, nothing written) while its spend plus its
    open holds has reached the cap; money its requests give back admits it again. Its
    requests together exceed the cap by at most one request's worst case."""
    account = await new_account(pool, nanos=USD, spend_cap_nanos=15_000_000)  # $0.015
    first, second, third = rid(), rid(), rid()
    held = await billing.hold(first, account.key_id, "claude-sonnet-4-5", 10, 10, "::1")
    # $0.00016 held < cap: admitted, although its worst case alone passes the cap
    big = await billing.hold(second, account.key_id, "claude-sonnet-4-5", 1000, 1000, "::1")
    assert big.amount_nanos == 21_000_000 > 15_000_000
    before = await balances(pool, account.id)
    with pytest.raises(RateLimitError) as info:
        await billing.hold(third, account.key_id, "claude-sonnet-4-5", 1, 1, "::1")
    assert info.value.status == 429 and info.value.limit == "key_spend_cap"
    assert "spend cap" in info.value.message and info.value.headers["Retry-After"] == "1"
    assert await balances(pool, account.id) == before
    assert not await pool.fetchval(
        "SELECT count(*) FROM billing_holds WHERE request_id = $1", third
    )
    await billing.release(second)
    await billing.settle(first, Usage(10, 10))
    await billing.settle(
        (await billing.hold(third, account.key_id, "claude-sonnet-4-5", 1, 1, "::1")).request_id,
        Usage(1, 1),
    )
    assert held.amount_nanos > 0
    assert await balances(pool, account.id) == (USD - 180_000 - 18_000, 0)
