"""Load shedding: past ``max_in_flight`` requests in flight, a new API request is answered
529 ``overloaded_error`` with ``retry-after`` at once (before authentication, before any
work), counted in the metrics; /v1/health says degraded while the process sheds. What
was admitted is served and billed once; what was shed costs nothing."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import anthropic
import asyncpg

from alicode_gw.money import ledger
from alicode_gw.money.usd import parse_usd
from tests.support.customers import balance, client_for, make_customer, own_gateway
from tests.support.gateway import stop_gateway

CAP = 3
SENT = 9
SLOW = "[[mock: first_byte_delay_ms=600]]"


async def test_past_the_cap_requests_are_shed_at_once_and_nothing_is_lost(
    db: asyncpg.Connection, make_config
) -> None:
    gateway = await own_gateway(db, make_config, "shed", max_in_flight=CAP)
    customer = await make_customer(db)
    client = client_for(gateway, customer)
    before = await balance(gateway, db, customer.email)

    async def one(n: int) -> tuple[int, float, str | None, object]:
        started = time.monotonic()
        try:
            raw = await client.messages.with_raw_response.create(
                model="claude-sonnet-4-6",
                max_tokens=50,
                messages=[{"role": "user", "content": f"question {n} {SLOW}"}],
            )
        except anthropic.APIStatusError as exc:
            return (
                exc.status_code,
                time.monotonic() - started,
                exc.response.headers.get("retry-after"),
                exc.body,
            )
        return 200, time.monotonic() - started, raw.headers["x-alicode-cost-usd"], None

    try:
        answers = await asyncio.gather(*(one(n) for n in range(SENT)))
        async with (
            aiohttp.ClientSession() as http,
            http.get(gateway.url + "/v1/health") as resp,
        ):
            health = await resp.json()
        exposition = gateway.state.metrics.exposition().decode()
        after = await balance(gateway, db, customer.email)
    finally:
        await client.close()
        await stop_gateway(gateway)

    served = [a for a in answers if a[0] == 200]
    shed = [a for a in answers if a[0] != 200]
    assert len(served) == CAP and len(shed) == SENT - CAP
    for status, elapsed, retry_after, body in shed:
        assert status == 529
        assert retry_after == "1"
        assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        assert elapsed < 0.5  # at once: not after the slow answers in flight
    assert f"alicode_shed_requests_total {float(SENT - CAP)}" in exposition
    assert health["status"] == "degraded"
    assert any("shedding" in reason for reason in health["reasons"])
    # Billed once each, the shed ones not at all; the books add up.
    charged = sum(parse_usd(str(cost)) for _, _, cost, _ in served)
    assert before - after == charged > 0
    charges = await db.fetchval(
        "SELECT count(*) FROM ledger WHERE account_id = $1 AND kind = 'charge'",
        customer.account_id,
    )
    assert charges == CAP
    problems = await ledger.audit(db)
    assert not problems, [p.as_dict() for p in problems]


async def test_health_and_metrics_are_never_shed(db: asyncpg.Connection, make_config) -> None:
    gateway = await own_gateway(db, make_config, "shed", max_in_flight=1)
    customer = await make_customer(db)
    client = client_for(gateway, customer)
    try:
        slow = asyncio.ensure_future(
            client.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=50,
                messages=[{"role": "user", "content": f"hold the slot {SLOW}"}],
            )
        )
        while gateway.state.in_flight == 0:  # noqa: ASYNC110 (the slot is taken)
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + "/v1/health") as resp:
                assert resp.status == 200
            async with http.get(gateway.url + "/metrics") as resp:
                assert resp.status in (200, 401, 403)  # answered, not shed
        await slow
    finally:
        await client.close()
        await stop_gateway(gateway)
