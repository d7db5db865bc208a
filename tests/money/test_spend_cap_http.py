"""A key's spend cap as a customer sees it: 300 concurrent requests through the gateway,
with the official anthropic SDK, of a key capped at $0.001 on a well-funded account. The
cap is reserved at admission, so the key spends at most its cap plus one request's
worst case."""

from __future__ import annotations

import asyncio

import anthropic
import asyncpg

from alicode_gw.money.billing import hold_amount
from alicode_gw.money.usd import format_usd
from tests.support.customers import make_customer, own_gateway
from tests.support.gateway import stop_gateway
from tests.support.money import balances

NANOS = 1_000_000_000
CAP = NANOS // 1000  # $0.001
MODEL = "claude-haiku-4-5"
MAX_TOKENS = 100


def message(n: int) -> list[dict[str, str]]:
    # Each answer takes 0.2 s, so that the 300 overlap.
    return [{"role": "user", "content": f"question {n} [[mock: first_byte_delay_ms=200]]"}]


async def test_a_spend_cap_holds_under_300_concurrent_requests(
    db: asyncpg.Connection, make_config
) -> None:
    gateway = await own_gateway(
        db, make_config, "cap-http", ip_rpm=0, ip_concurrency=0, db_pool_size=20
    )
    customer = await make_customer(db, usd=20, spend_cap_nanos=CAP)
    before = await balances(db, customer.account_id)
    prices = gateway.state.catalog.resolve(MODEL)
    assert prices is not None
    worst = max(
        hold_amount(
            prices.prices,
            gateway.state.tokens.count({"model": MODEL, "messages": message(n)}),
            MAX_TOKENS,
        )
        for n in range(300)
    )
    client = anthropic.AsyncAnthropic(
        api_key=customer.key, base_url=gateway.url, max_retries=0, timeout=120
    )

    async def one(n: int) -> str:
        try:
            await client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=message(n))
        except anthropic.RateLimitError as exc:
            assert exc.body["error"]["type"] == "rate_limit_error", exc.body
            if "spend cap" in exc.body["error"]["message"]:
                return "capped"
            # a revoked key's refusals count against the address's failed attempts
            assert "failed authentication" in exc.body["error"]["message"], exc.body
            return "revoked"
        except anthropic.AuthenticationError:  # the cap was reached: the key is revoked
            return "revoked"
        return "served"

    try:
        results = await asyncio.gather(*(one(n) for n in range(300)))
        assert not await gateway.state.tasks.settle(5.0)
    finally:
        await client.close()
        await stop_gateway(gateway)

    spent = await db.fetchval("SELECT spent_nanos FROM api_keys WHERE id = $1", customer.key_id)
    charged = -await db.fetchval(
        "SELECT coalesce(sum(amount_nanos), 0) FROM ledger WHERE key_id = $1",
        customer.key_id,
    )
    counts = {outcome: results.count(outcome) for outcome in ("served", "capped", "revoked")}
    print(  # the figures (pytest -s)
        f"spend cap ${format_usd(CAP)}: {counts}; spent ${format_usd(spent)}, "
        f"worst case of one request ${format_usd(worst)}"
    )
    assert spent <= CAP + worst
    assert counts["served"] >= 1 and counts["capped"] >= 1
    assert spent == charged > 0
    balance, held = await balances(db, customer.account_id)
    assert (balance, held) == (before[0] - charged, 0)
