"""Billing as a customer sees it: 500 concurrent requests through the gateway, with the
official anthropic SDK, at an account whose balance covers only some of them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anthropic
import asyncpg

from alicode_gw import app
from alicode_gw.config import Config
from alicode_gw.money.usd import parse_usd
from tests.support.customers import Customer, make_customer, own_gateway
from tests.support.gateway import stop_gateway
from tests.support.money import balances

NANOS = 1_000_000_000


async def funded_gateway(
    db: asyncpg.Connection, make_config: Callable[..., Config], nanos: int
) -> tuple[app.Gateway, Customer]:
    """A gateway without IP limits, and a customer whose account holds ``nanos``."""
    gateway = await own_gateway(
        db, make_config, "bill-http", ip_rpm=0, ip_concurrency=0, db_pool_size=20
    )
    customer = await make_customer(db, usd=0)
    await db.execute("SELECT billing.topup($1, $2, 'http test')", customer.account_id, nanos)
    return gateway, customer


async def test_500_concurrent_requests_through_the_gateway(
    db: asyncpg.Connection, make_config
) -> None:
    top_up = NANOS // 4  # $0.25
    gateway, customer = await funded_gateway(db, make_config, top_up)
    samples: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def monitor() -> None:
        while not done.is_set():
            samples.append(await balances(db, customer.account_id))
            await asyncio.sleep(0.01)

    client = anthropic.AsyncAnthropic(
        api_key=customer.key, base_url=gateway.url, max_retries=0, timeout=120
    )

    async def one(n: int) -> tuple[int, int | None]:
        try:
            raw = await client.messages.with_raw_response.create(
                model="claude-haiku-4-5",
                max_tokens=2000,
                # Each answer takes 0.2 s, so that the 500 overlap and their holds
                # (and the node's lease) cannot cover them all at once.
                messages=[
                    {"role": "user", "content": f"question {n} [[mock: first_byte_delay_ms=200]]"}
                ],
            )
        except anthropic.APIStatusError as exc:
            assert exc.status_code == 402, exc.body
            assert exc.body["error"]["type"] == "insufficient_credits"
            return 402, None
        return 200, parse_usd(raw.headers["x-alicode-cost-usd"])

    watcher = asyncio.create_task(monitor())
    try:
        results = await asyncio.gather(*(one(n) for n in range(500)))
    finally:
        done.set()
        await watcher
        await client.close()
        await stop_gateway(gateway)

    served = [cost for status, cost in results if status == 200]
    refused = [status for status, _ in results if status == 402]
    assert served and refused and len(served) + len(refused) == 500
    assert all(cost is not None and cost > 0 for cost in served)
    assert samples and all(bal >= 0 and bal - held >= 0 for bal, held in samples)
    charges = await db.fetch(
        "SELECT amount_nanos FROM ledger WHERE account_id = $1 AND kind = 'charge'",
        customer.account_id,
    )
    # one ledger row per served request, and the headers told the customer the truth
    assert len(charges) == len(served)
    assert -sum(r["amount_nanos"] for r in charges) == sum(c for c in served if c)
    assert await balances(db, customer.account_id) == (top_up - sum(c for c in served if c), 0)


async def test_concurrent_requests_admitted_against_a_credit_lease(
    db: asyncpg.Connection, make_config
) -> None:
    """A funded account: after its first requests, the node admits the rest against a
    credit lease (no hold round trip), streams included; every request is billed once,
    the headers match the ledger, and a stopping node gives its lease back."""
    top_up = 20 * NANOS
    gateway, customer = await funded_gateway(db, make_config, top_up)
    client = anthropic.AsyncAnthropic(
        api_key=customer.key, base_url=gateway.url, max_retries=0, timeout=120
    )

    async def one(n: int) -> tuple[str, int] | None:
        messages = [{"role": "user", "content": f"question {n} [[mock: words={n % 9}]]"}]
        if n % 3:
            raw = await client.messages.with_raw_response.create(
                model="claude-haiku-4-5", max_tokens=300, messages=messages
            )
            return raw.headers["request-id"], parse_usd(raw.headers["x-alicode-cost-usd"])
        async with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=300, messages=messages
        ) as stream:
            await stream.get_final_message()
        return None

    try:
        results: list[tuple[str, int] | None] = []
        for wave in range(8):
            results += await asyncio.gather(*(one(wave * 40 + n) for n in range(40)))
        assert not await gateway.state.tasks.settle(5.0)
        leases = await db.fetch(
            "SELECT amount_nanos FROM billing_leases WHERE account_id = $1 AND status = 'open'",
            customer.account_id,
        )
        balance, held = await balances(db, customer.account_id)
        assert len(leases) == 1 and held == leases[0]["amount_nanos"] > 0
    finally:
        await client.close()
        await stop_gateway(gateway)

    charges = await db.fetch(
        "SELECT request_id, amount_nanos, cost_nanos FROM ledger"
        " WHERE account_id = $1 AND kind = 'charge'",
        customer.account_id,
    )
    assert len(charges) == len(results) == 320
    assert all(r["amount_nanos"] == -r["cost_nanos"] < 0 for r in charges)
    spent = -sum(r["amount_nanos"] for r in charges)
    assert balance == top_up - spent
    # The JSON answers' headers are their ledger rows' costs (streams: in the ledger).
    header_costs = dict(result for result in results if result is not None)
    assert len(header_costs) == 213
    ledger_costs = {r["request_id"]: r["cost_nanos"] for r in charges}
    assert header_costs == {rid: ledger_costs[rid] for rid in header_costs}
    hold_rows = await db.fetchval(
        "SELECT count(*) FROM billing_holds WHERE account_id = $1", customer.account_id
    )
    assert hold_rows < 80  # the other requests were admitted against the lease
    # The stopped node gave its lease back.
    assert await balances(db, customer.account_id) == (top_up - spent, 0)
    assert not await db.fetchval(
        "SELECT count(*) FROM billing_leases WHERE account_id = $1 AND status = 'open'",
        customer.account_id,
    )
