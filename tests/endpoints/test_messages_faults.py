"""/v1/messages when things go wrong: upstream faults, retries before the first byte,
mid-stream failures, clients that leave, short balances, concurrency. ``audit`` is
checked after every test (the ``gw`` fixture)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import anthropic
import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.money import ledger
from tests.support.customers import (
    MODEL,
    Customer,
    balance,
    client_for,
    ledger_rows,
    make_customer,
    own_gateway,
    upstream_exchanges,
)
from tests.support.gateway import UPSTREAM_KEYS, stop_gateway

A, B, C = UPSTREAM_KEYS


def ask(text: str, **extra: object) -> dict:
    return {
        "model": MODEL,
        "max_tokens": 200,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def states(gateway: app.Gateway) -> dict[str, str]:
    secret_by_name = {f"cred-{n}": s for n, s in enumerate(UPSTREAM_KEYS)}
    return {secret_by_name[c["name"]]: c["state"] for c in gateway.state.keypool.snapshot()}


async def weighted_pool(gateway: app.Gateway, db: asyncpg.Connection, weights: dict) -> None:
    """Give credentials weights so the first pick is predictable (smooth WRR picks the
    heaviest first), then reload the gateway's view."""
    for number, secret in enumerate(UPSTREAM_KEYS):
        await db.execute(
            "UPDATE upstream_credentials SET weight = $2 WHERE name = $1",
            f"cred-{number}",
            weights.get(secret, 1),
        )
    await gateway.state.keypool.refresh(reload=True)


async def no_open_holds(db: asyncpg.Connection, customer: Customer) -> bool:
    return not await db.fetchval(
        "SELECT count(*) FROM billing_holds WHERE account_id = $1 AND status = 'held'",
        customer.account_id,
    )


async def test_rate_limited_key_is_cooled_and_request_retried(
    gw_round_robin: app.Gateway,
    customer: Customer,
    db: asyncpg.Connection,
    mock_upstream: MockUpstream,
) -> None:
    await weighted_pool(gw_round_robin, db, {A: 100, B: 10, C: 1})
    async with client_for(gw_round_robin, customer) as client:
        message = await client.messages.create(
            **ask(f"[[mock: status=429 retry_after=30 only_key={A}]]")
        )
    assert message.content[0].type == "text"
    tried = [ex.api_key for ex in upstream_exchanges(mock_upstream)[-2:]]
    assert tried == [A, B]
    assert states(gw_round_robin)[A] == "cooling" and states(gw_round_robin)[B] == "healthy"
    cooling = next(c for c in gw_round_robin.state.keypool.snapshot() if c["state"] == "cooling")
    assert 25 < cooling["cooldown_remaining"] <= 30
    # While A cools, requests go elsewhere without touching it.
    async with client_for(gw_round_robin, customer) as client:
        for _ in range(3):
            await client.messages.create(**ask("again"))
    assert A not in [ex.api_key for ex in upstream_exchanges(mock_upstream)[-3:]]


async def test_every_key_rate_limited_is_429_unbilled(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    before = await balance(gw, db, customer.email)
    async with client_for(gw, customer) as client:
        with pytest.raises(anthropic.RateLimitError) as info:
            await client.messages.create(**ask("[[mock: status=429 retry_after=7]]"))
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert await balance(gw, db, customer.email) == before
    assert await no_open_holds(db, customer)
    assert not await ledger_rows(db, info.value.request_id, wait=0)
    assert set(states(gw).values()) == {"cooling"}


async def test_overloaded_everywhere_is_529(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    async with client_for(gw, customer) as client:
        with pytest.raises(anthropic.OverloadedError) as info:
            await client.messages.create(**ask("[[mock: status=529]]"))
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"
    # one customer's failures cool nothing shared; a second customer's make it the pool's
    assert set(states(gw).values()) == {"healthy"}
    async with client_for(gw, await make_customer(db)) as client:
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(**ask("[[mock: status=529]]"))
    assert set(states(gw).values()) == {"cooling"}


async def test_server_errors_everywhere_are_502(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    before = await balance(gw, db, customer.email)
    async with client_for(gw, customer) as client:
        with pytest.raises(anthropic.InternalServerError) as info:
            await client.messages.create(**ask("[[mock: status=500]]"))
    assert info.value.status_code == 502
    assert info.value.body["error"]["type"] == "api_error"
    assert await balance(gw, db, customer.email) == before
    assert await no_open_holds(db, customer)


async def test_rejected_credential_is_disabled_until_enabled(
    gw_round_robin: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    await weighted_pool(gw_round_robin, db, {A: 100, B: 10, C: 1})
    async with client_for(gw_round_robin, customer) as client:
        await client.messages.create(**ask(f"[[mock: status=401 only_key={A}]]"))
    assert states(gw_round_robin)[A] == "disabled"
    row = await db.fetchrow(
        "SELECT status, disabled_reason FROM upstream_credentials WHERE secret = $1", A
    )
    assert row["status"] == "disabled" and "401" in row["disabled_reason"]


async def test_no_healthy_credential_is_503(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    await db.execute("UPDATE upstream_credentials SET status = 'disabled', disabled_at = now()")
    await gw.state.keypool.refresh(reload=True)
    before = await balance(gw, db, customer.email)
    async with client_for(gw, customer) as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(**ask("anyone?"))
    assert info.value.status_code == 503
    assert info.value.body["error"]["type"] == "overloaded_error"
    assert await balance(gw, db, customer.email) == before
    assert await no_open_holds(db, customer)


async def test_insufficient_credits_is_402_before_upstream(
    gw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    poor = await make_customer(db, usd=0)
    before = len(mock_upstream.exchanges)
    async with client_for(gw, poor) as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(**ask("hello"))
    assert info.value.status_code == 402
    assert info.value.body["error"]["type"] == "insufficient_credits"
    assert len(mock_upstream.exchanges) == before


async def test_error_event_mid_stream_is_relayed_and_partial_billed(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    async with client_for(gw, customer) as client:
        async with client.messages.stream(**ask("[[mock: error_after=8 words=30]]")) as stream:
            request_id = stream.response.headers["request-id"]
            with pytest.raises(anthropic.APIStatusError) as info:
                async for _ in stream:
                    pass
    assert info.value.body["error"]["type"] == "overloaded_error"
    rows = await ledger_rows(db, request_id)
    assert len(rows) == 1
    assert rows[0]["output_tokens"] > 0 and rows[0]["status"] == "estimated"
    assert await no_open_holds(db, customer)


async def test_dropped_upstream_ends_stream_with_error_event(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    headers = {"x-api-key": customer.key, "anthropic-version": "2023-06-01"}
    payload = ask("[[mock: drop_after=8 words=30]]", stream=True)
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/v1/messages", json=payload, headers=headers) as resp:
            assert resp.status == 200
            received = await resp.read()
            request_id = resp.headers["request-id"]
    events = [block for block in received.split(b"\n\n") if block]
    assert events[-1].startswith(b"event: error\ndata: ")
    error = json.loads(events[-1].split(b"data: ", 1)[1])
    assert error["type"] == "error" and error["request_id"] == request_id
    assert b"message_stop" not in received
    rows = await ledger_rows(db, request_id)
    assert len(rows) == 1 and rows[0]["status"] == "estimated"


async def test_silent_upstream_ends_stream_with_timeout_error(
    db: asyncpg.Connection, make_config, customer: Customer
) -> None:
    """ALICODE_UPSTREAM_IDLE_TIMEOUT: the upstream goes quiet after message_start; the
    client gets an in-band error, and what was generated is billed."""
    gateway = await own_gateway(db, make_config, "idle", upstream_idle_timeout=0.3)
    headers = {"x-api-key": customer.key, "anthropic-version": "2023-06-01"}
    payload = ask("[[mock: words=30 chunk_delay_ms=3000]]", stream=True)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                gateway.url + "/v1/messages", json=payload, headers=headers
            ) as resp:
                assert resp.status == 200
                received = await resp.read()
                request_id = resp.headers["request-id"]
    finally:
        await stop_gateway(gateway)
    events = [block for block in received.split(b"\n\n") if block]
    assert events[0].startswith(b"event: message_start")
    assert events[-1].startswith(b"event: error\ndata: ")
    error = json.loads(events[-1].split(b"data: ", 1)[1])
    assert error["request_id"] == request_id and "timed out" in error["error"]["message"]
    rows = await ledger_rows(db, request_id)  # what message_start reported
    start = json.loads(events[0].split(b"data: ", 1)[1])["message"]["usage"]
    assert len(rows) == 1 and rows[0]["input_tokens"] == start["input_tokens"] > 0
    assert not await ledger.audit(db)


async def test_first_byte_timeout_does_not_cut_a_slow_stream(
    db: asyncpg.Connection, make_config, customer: Customer
) -> None:
    """The first-byte timeout covers the wait for the answer; between the chunks of a
    stream only the idle timeout applies."""
    gateway = await own_gateway(
        db, make_config, "gaps", upstream_first_byte_timeout=0.3, upstream_idle_timeout=5
    )
    try:
        async with client_for(gateway, customer) as client:
            async with client.messages.stream(**ask("[[mock: words=2 chunk_delay_ms=600]]")) as s:
                message = await s.get_final_message()
    finally:
        await stop_gateway(gateway)
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 2


async def test_upstream_slow_to_answer_is_502_unbilled(
    db: asyncpg.Connection, make_config, customer: Customer, mock_upstream: MockUpstream
) -> None:
    """ALICODE_UPSTREAM_FIRST_BYTE_TIMEOUT: no credential answers in time; each attempt
    goes to another credential, then the client gets the API's 502, and nothing is
    billed."""
    gateway = await own_gateway(db, make_config, "slow", upstream_first_byte_timeout=0.2)
    before = await balance(gateway, db, customer.email)
    asked = len(upstream_exchanges(mock_upstream))
    try:
        async with client_for(gateway, customer) as client:
            with pytest.raises(anthropic.InternalServerError) as info:
                await client.messages.create(**ask("[[mock: first_byte_delay_ms=2000]]"))
        keys = [ex.api_key for ex in upstream_exchanges(mock_upstream)[asked:]]
    finally:
        await stop_gateway(gateway)
    assert info.value.status_code == 502
    assert info.value.body["error"]["type"] == "api_error"
    assert not await ledger_rows(db, info.value.request_id)
    assert await balance(gateway, db, customer.email) == before
    assert sorted(keys) == sorted(UPSTREAM_KEYS)  # three attempts, three credentials


async def test_client_disconnect_settles_exact_usage(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    headers = {"x-api-key": customer.key, "anthropic-version": "2023-06-01"}
    payload = ask("[[mock: words=40 chunk_delay_ms=25]]", stream=True)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(gw.url + "/v1/messages", json=payload, headers=headers)
        request_id = resp.headers["request-id"]
        await resp.content.readany()
        resp.close()  # the client goes away mid-stream
    rows = await ledger_rows(db, request_id, wait=10)
    assert len(rows) == 1
    sent = upstream_exchanges(mock_upstream)[-1]
    final_usage = None
    for block in bytes(sent.response_bytes).split(b"\n\n"):
        if block.startswith(b"event: message_delta"):
            final_usage = json.loads(block.split(b"data: ", 1)[1])["usage"]
    assert final_usage is not None and sent.done
    assert rows[0]["output_tokens"] == final_usage["output_tokens"] == 40
    assert rows[0]["status"] == "complete"


async def test_concurrent_requests_balance_equals_ledger(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    before = await balance(gw, db, customer.email)
    async with client_for(gw, customer) as client:

        async def one(n: int) -> None:
            if n % 2:
                await client.messages.create(**ask(f"json {n}"))
            else:
                async with client.messages.stream(**ask(f"sse {n}")) as stream:
                    await stream.get_final_message()

        await asyncio.gather(*(one(n) for n in range(40)))
    await asyncio.sleep(0.3)
    charged = await db.fetchval(
        "SELECT -sum(amount_nanos) FROM ledger WHERE account_id = $1 AND kind = 'charge'",
        customer.account_id,
    )
    count = await db.fetchval(
        "SELECT count(*) FROM ledger WHERE account_id = $1 AND kind = 'charge'",
        customer.account_id,
    )
    assert count == 40
    assert before - await balance(gw, db, customer.email) == charged > 0
    assert await no_open_holds(db, customer)


# the fixtures come from tests.messages_helpers


async def test_back_to_back_requests_find_the_previous_one_settled(
    gw: app.Gateway, db: asyncpg.Connection
) -> None:
    """Settlement and the limits release run after the answer, but are queued before it
    leaves: a client sending its next request at once never meets its previous
    request's lease (concurrency limit 1) or hold (a balance that covers one request)."""
    body = {"model": MODEL, "max_tokens": 8000, "messages": [{"role": "user", "content": "hi"}]}
    customer = await make_customer(db, usd=0, concurrency=1)
    # A hold here is ~$0.12 (8000 output tokens at $15/MTok): $0.20 covers one, not two.
    await ledger.topup(db, customer.email, 200_000_000)
    headers = {"x-api-key": customer.key, "anthropic-version": "2023-06-01"}
    statuses = []
    async with aiohttp.ClientSession() as session:
        for n in range(40):
            payload = {**body, "stream": n % 2 == 1}
            async with session.post(gw.url + "/v1/messages", headers=headers, json=payload) as r:
                await r.read()
                statuses.append(r.status)
    assert statuses == [200] * 40
