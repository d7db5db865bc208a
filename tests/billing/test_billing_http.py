"""Billing as a customer sees it: 500 concurrent requests through the gateway, with the
official anthropic SDK, at an account whose balance covers only some of them."""

from __future__ import annotations

import asyncio
import secrets

import anthropic
import asyncpg

from alicode_gw.billing import parse_usd
from tests.billing.conftest import balances
from tests.conftest import start_gateway, stop_gateway
from tests.messages_helpers import make_customer, reset_pool

NANOS = 1_000_000_000


async def test_500_concurrent_requests_through_the_gateway(
    db: asyncpg.Connection, make_config
) -> None:
    await reset_pool(db)
    gateway = await start_gateway(
        make_config(
            redis_prefix=f"bill-http-{secrets.token_hex(4)}:",
            ip_rpm=0,
            ip_concurrency=0,
            db_pool_size=20,
        )
    )
    customer = await make_customer(db, usd=0)
    top_up = NANOS // 4  # $0.25
    await db.execute("SELECT billing.topup($1, $2, 'http test')", customer.account_id, top_up)
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
                messages=[{"role": "user", "content": f"question number {n}"}],
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
