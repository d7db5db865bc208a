"""A key's token budget as a customer sees it: 300 concurrent requests through the
gateway, with the official anthropic SDK, of a key with a 1,000-token budget. Each
admission reserves its worst case (estimated input + max_tokens), so the key uses at
most its budget plus one request's worst case."""

from __future__ import annotations

import asyncio

import aiohttp
import anthropic
import asyncpg

from tests.support.customers import make_customer, own_gateway
from tests.support.gateway import stop_gateway

BUDGET = 1000
MODEL = "claude-haiku-4-5"
MAX_TOKENS = 100
REFUSED = -1  # a request refused with 429


def message(n: int) -> list[dict[str, str]]:
    # Each answer takes 0.2 s, so that the 300 overlap.
    return [{"role": "user", "content": f"question {n} [[mock: first_byte_delay_ms=200]]"}]


async def test_a_token_budget_holds_under_300_concurrent_requests(
    db: asyncpg.Connection, make_config
) -> None:
    gateway = await own_gateway(
        db, make_config, "budget-http", ip_rpm=0, ip_concurrency=0, db_pool_size=20
    )
    customer = await make_customer(db, usd=20, budget_tokens=BUDGET)
    worst = {
        n: gateway.state.tokens.count({"model": MODEL, "messages": message(n)}) + MAX_TOKENS
        for n in range(300)
    }
    client = anthropic.AsyncAnthropic(
        api_key=customer.key, base_url=gateway.url, max_retries=0, timeout=120
    )

    async def one(n: int) -> int:
        try:
            raw = await client.messages.with_raw_response.create(
                model=MODEL, max_tokens=MAX_TOKENS, messages=message(n)
            )
        except anthropic.RateLimitError as exc:
            assert exc.body["error"]["type"] == "rate_limit_error", exc.body
            assert "Token budget" in exc.body["error"]["message"]
            return REFUSED
        usage = (await raw.parse()).usage
        used = usage.input_tokens + usage.output_tokens
        assert used <= worst[n]  # the worst case reserved covered the request
        return used

    try:
        results = await asyncio.gather(*(one(n) for n in range(300)))
        assert not await gateway.state.tasks.settle(5.0)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{gateway.url}/v1/key-status", headers={"x-api-key": customer.key}
            ) as resp,
        ):
            status = await resp.json()
    finally:
        await client.close()
        await stop_gateway(gateway)

    served = [used for used in results if used != REFUSED]
    counted = status["budget"]["used_tokens"]
    print(  # the figures (pytest -s)
        f"token budget {BUDGET}: {len(served)} served, {results.count(REFUSED)} refused (429); "
        f"{counted} tokens used, worst case of one request {max(worst.values())}"
    )
    assert served and results.count(REFUSED)
    assert counted == sum(served)
    assert counted <= BUDGET + max(worst.values())
