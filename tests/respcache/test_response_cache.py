"""The response cache over real HTTP with the official anthropic SDK: hits replay the
stored bytes exactly, are billed at the hit price through the same settlement, and
nothing readable lands in Redis or the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import anthropic
import asyncpg
import pytest
from multidict import CIMultiDict
from redis.asyncio import Redis

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.limits.resp import RespConnection
from alicode_gw.money.usd import format_usd
from tests.support.customers import (
    MODEL,
    Customer,
    balance,
    client_for,
    ledger_rows,
    make_customer,
    upstream_exchanges,
)
from tests.support.logs import AccessLines

CacheGateway = Callable[..., Awaitable[app.Gateway]]  # the cache_gateway fixture
CLIENT_LOGGERS = frozenset({"anthropic", "httpx", "httpcore", "httpx2", "httpcore2"})


def prompt(text: str = "") -> dict:
    """A request of the test's own (a fresh prompt: no other test shares its entry)."""
    return {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": f"{text} {secrets.token_hex(8)}"}],
    }


async def create(client: anthropic.AsyncAnthropic, request: dict, **kw):
    raw = await client.messages.with_raw_response.create(**request, **kw)
    return raw, await raw.read()


async def test_same_create_twice_is_a_byte_equal_free_hit(
    cache_gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream, db: asyncpg.Connection
) -> None:
    request = prompt("cache me")
    async with client_for(cache_gw, customer) as client:
        first, first_bytes = await create(client, request)
        assert await balance(cache_gw, db, customer.email)  # the miss is settled
        before = await balance(cache_gw, db, customer.email)
        second, second_bytes = await create(client, request)
    assert first.headers["x-cache"] == "MISS" and "x-cache-ttl" not in first.headers
    assert second.headers["x-cache"] == "HIT"
    assert second_bytes == first_bytes
    assert second.headers["content-type"] == first.headers["content-type"]
    assert 3590 <= int(second.headers["x-cache-ttl"]) <= 3600
    usage = json.loads(first_bytes)["usage"]
    saved = usage["input_tokens"] + usage["output_tokens"]
    assert int(second.headers["x-tokens-saved"]) == saved
    assert second.headers["request-id"] != first.headers["request-id"]
    assert len(upstream_exchanges(mock_upstream)) == 1
    # Billed through the same settlement at the hit price (0 by default): a charge row of
    # 0 marked as a hit, with the tokens the hit saved.
    assert second.headers["x-alicode-cost-usd"] == format_usd(0)
    assert await balance(cache_gw, db, customer.email) == before
    (hit,) = await ledger_rows(db, second.headers["request-id"])
    (miss,) = await ledger_rows(db, first.headers["request-id"])
    assert hit["cache_hit"] and not miss["cache_hit"]
    assert (hit["amount_nanos"], hit["cost_nanos"], hit["kind"]) == (0, 0, "charge")
    assert (hit["input_tokens"], hit["output_tokens"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )


@pytest.mark.parametrize("lease_pct", [0, 50], ids=["database-hold", "credit-lease"])
async def test_a_hit_costs_the_configured_percentage(
    cache_gateway: CacheGateway, db: asyncpg.Connection, lease_pct: int
) -> None:
    gw = await cache_gateway(response_cache_hit_pct=30, credit_lease_pct=lease_pct)
    customer = await make_customer(db)
    request = prompt("half price")
    async with client_for(gw, customer) as client:
        first, _ = await create(client, request)
        before = await balance(gw, db, customer.email)
        second, _ = await create(client, request)
    assert second.headers["x-cache"] == "HIT"
    spent = before - await balance(gw, db, customer.email)
    held = "SELECT count(*) FROM billing_holds WHERE request_id = $1"
    # Settled through billing.settle (a hold row) or billing.settle_leased (none).
    assert await db.fetchval(held, second.headers["request-id"]) == (0 if lease_pct else 1)
    (hit,) = await ledger_rows(db, second.headers["request-id"])
    (miss,) = await ledger_rows(db, first.headers["request-id"])
    # 30 % of the original's usage at the model's prices, by the one rounding rule.
    expected = await db.fetchval(
        """SELECT billing.request_cost(
               p_price_input_micro => m.input_price, p_price_output_micro => m.output_price,
               p_price_cache_write_5m_micro => m.cache_write_5m_price,
               p_price_cache_write_1h_micro => m.cache_write_1h_price,
               p_price_cache_read_micro => m.cache_read_price, p_discount_pct => 70,
               p_tokens_input => $2, p_tokens_output => $3, p_tokens_cache_creation_5m => 0,
               p_tokens_cache_creation_1h => 0, p_tokens_cache_read => 0)
           FROM models m WHERE m.id = $1""",
        hit["model"],
        miss["input_tokens"],
        miss["output_tokens"],
    )
    assert 0 < expected < miss["cost_nanos"]
    assert hit["cache_hit"] and hit["cost_nanos"] == -hit["amount_nanos"] == expected == spent
    assert second.headers["x-alicode-cost-usd"] == format_usd(expected)


async def test_stream_twice_replays_the_same_events_as_sse(
    cache_gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream, db: asyncpg.Connection
) -> None:
    request = prompt("stream me")
    runs = []
    async with client_for(cache_gw, customer) as client:
        for _ in range(2):
            async with client.messages.stream(**request) as stream:
                events = [event.model_dump() async for event in stream]
                runs.append((stream.response.headers, events, await stream.get_final_message()))
    (first_headers, first_events, first_final), (headers, events, final) = runs
    assert first_headers["x-cache"] == "MISS"
    assert headers["x-cache"] == "HIT"
    assert headers["content-type"].startswith("text/event-stream")
    assert events == first_events and len(events) > 5
    assert final == first_final and final.stop_reason == "end_turn"
    assert int(headers["x-tokens-saved"]) == final.usage.input_tokens + final.usage.output_tokens
    assert len(upstream_exchanges(mock_upstream)) == 1
    (hit,) = await ledger_rows(db, headers["request-id"])
    assert hit["cache_hit"] and hit["amount_nanos"] == 0
    assert hit["output_tokens"] == final.usage.output_tokens


async def raw_post(
    gw: app.Gateway, customer: Customer, body: dict, **headers: str
) -> tuple[int, CIMultiDict[str], bytes, int]:
    """(status, headers, body bytes, chunks read) of a raw POST /v1/messages."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gw.url + "/v1/messages",
            json=body,
            headers={"x-api-key": customer.key, "anthropic-version": "2023-06-01", **headers},
        ) as resp:
            chunks = [chunk async for chunk in resp.content.iter_any()]
            return resp.status, resp.headers.copy(), b"".join(chunks), len(chunks)


async def test_stream_hit_is_byte_equal_sse_and_a_json_request_is_another_entry(
    cache_gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    body = {**prompt("raw stream"), "stream": True}
    status, headers, first, _ = await raw_post(cache_gw, customer, body)
    assert status == 200 and headers["X-Cache"] == "MISS"
    await cache_gw.state.tasks.settle(5.0)  # the store runs after the answer
    status, headers, second, _ = await raw_post(cache_gw, customer, body)
    assert status == 200 and headers["X-Cache"] == "HIT"
    assert second == first and first.rstrip().endswith(b'"type":"message_stop"}')
    assert headers["X-Accel-Buffering"] == "no"
    # stream false is a different request: its own entry.
    status, headers, _, _ = await raw_post(cache_gw, customer, {**body, "stream": False})
    assert headers["X-Cache"] == "MISS"
    # So are other anthropic-version / anthropic-beta headers.
    _, headers, _, _ = await raw_post(
        cache_gw, customer, body, **{"anthropic-beta": "some-beta-2025-01-01"}
    )
    assert headers["X-Cache"] == "MISS"
    assert len(upstream_exchanges(mock_upstream)) == 3


async def test_no_anthropic_version_is_the_version_the_upstream_receives(
    cache_gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    """The cache key is the request as the upstream receives it: without the header,
    the upstream gets the gateway's default anthropic-version, so it is that entry."""
    body = prompt("default version")
    async with aiohttp.ClientSession() as http:
        for version in ("2023-06-01", None):
            headers = {"x-api-key": customer.key}
            if version is not None:
                headers["anthropic-version"] = version
            async with http.post(cache_gw.url + "/v1/messages", json=body, headers=headers) as r:
                assert r.status == 200
                outcome = r.headers["X-Cache"]
                await r.read()
            await cache_gw.state.tasks.settle(5.0)
    assert outcome == "HIT"
    assert len(upstream_exchanges(mock_upstream)) == 1


async def test_no_cache_header_bypasses_lookup_and_store(
    cache_gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    request = prompt("bypass")
    no_cache = {"extra_headers": {"X-No-Cache": "true"}}
    async with client_for(cache_gw, customer) as client:
        bypassed, _ = await create(client, request, **no_cache)
        missed, _ = await create(client, request)  # nothing was stored by the bypass
        await cache_gw.state.tasks.settle(5.0)
        again, _ = await create(client, request, **no_cache)  # stored now, still bypassed
        hit, _ = await create(client, request)
    assert [r.headers["x-cache"] for r in (bypassed, missed, again, hit)] == [
        "BYPASS",
        "MISS",
        "BYPASS",
        "HIT",
    ]
    assert "x-cache-ttl" not in again.headers
    assert len(upstream_exchanges(mock_upstream)) == 3


async def test_a_key_that_opted_out_always_bypasses(
    cache_gw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    customer = await make_customer(db, response_cache=False)
    request = prompt("opted out")
    async with client_for(cache_gw, customer) as client:
        for _ in range(2):
            raw, _ = await create(client, request)
            assert raw.headers["x-cache"] == "BYPASS"
            await cache_gw.state.tasks.settle(5.0)
    assert len(upstream_exchanges(mock_upstream)) == 2


async def test_another_account_never_hits_an_entry(
    cache_gw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    alice, bob = await make_customer(db), await make_customer(db)
    request = prompt("same prompt, two accounts")
    async with client_for(cache_gw, alice) as client:
        first, _ = await create(client, request)
    await cache_gw.state.tasks.settle(5.0)
    async with client_for(cache_gw, bob) as client:
        other, _ = await create(client, request)
    assert (first.headers["x-cache"], other.headers["x-cache"]) == ("MISS", "MISS")
    assert len(upstream_exchanges(mock_upstream)) == 2


async def test_an_expired_entry_is_a_miss(
    cache_gateway: CacheGateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    # 3 s: the hit must come before the entry expires, also on a loaded machine.
    gw = await cache_gateway(response_cache_ttl=3)
    customer = await make_customer(db)
    request = prompt("short lived")
    async with client_for(gw, customer) as client:
        await create(client, request)
        await gw.state.tasks.settle(5.0)
        hit, _ = await create(client, request)
        assert hit.headers["x-cache"] == "HIT" and 1 <= int(hit.headers["x-cache-ttl"]) <= 3
        await asyncio.sleep(int(hit.headers["x-cache-ttl"]) + 0.3)  # rounded up: gone now
        expired, _ = await create(client, request)
    assert expired.headers["x-cache"] == "MISS"
    assert len(upstream_exchanges(mock_upstream)) == 2


async def test_cache_off_sends_no_cache_header(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    request = prompt("no cache here")
    async with client_for(gw, customer) as client:
        for _ in range(2):
            raw, _ = await create(client, request, extra_headers={"X-No-Cache": "true"})
            assert not any(name.startswith("x-cache") for name in raw.headers)
            raw, _ = await create(client, request)
            assert not any(name.startswith("x-cache") for name in raw.headers)
        async with client.messages.stream(**request) as stream:
            await stream.get_final_message()
            assert "x-cache" not in stream.response.headers
    assert len(upstream_exchanges(mock_upstream)) == 5


async def test_only_complete_successful_answers_are_stored(
    cache_gateway: CacheGateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    gw = await cache_gateway(response_cache_max_bytes=4000)
    customer = await make_customer(db)
    cut = {**prompt("[[mock: error_after=4]]"), "stream": True}  # an error event mid-stream
    large = {**prompt("[[mock: words=2000]]"), "max_tokens": 4000}  # over the size limit
    for body in (cut, large, {**large, "stream": True}):
        for _ in range(2):
            status, headers, _, _ = await raw_post(gw, customer, body)
            assert status == 200 and headers["X-Cache"] == "MISS"
            await gw.state.tasks.settle(5.0)
    assert len(upstream_exchanges(mock_upstream)) == 6
    assert gw.state.metrics.respcache_stored._value.get() == 0


async def test_the_openai_surface_is_not_cached(
    cache_gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": secrets.token_hex(8)}]}
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(
                cache_gw.url + "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {customer.key}"},
            ) as resp:
                assert resp.status == 200 and "X-Cache" not in resp.headers
                await resp.read()
            await cache_gw.state.tasks.settle(5.0)
    assert len(upstream_exchanges(mock_upstream)) == 2


async def test_a_hit_counts_as_a_request_but_spends_no_budget(
    cache_gw: app.Gateway, db: asyncpg.Connection
) -> None:
    customer = await make_customer(db, rpm=10, budget_tokens=100_000)
    request = prompt("budget")
    async with client_for(cache_gw, customer) as client:
        _, body = await create(client, request)
        await cache_gw.state.tasks.settle(5.0)
        hit, _ = await create(client, request)
        await cache_gw.state.tasks.settle(5.0)
        status = await client.get("/v1/key-status", cast_to=object)
    assert hit.headers["x-cache"] == "HIT"
    usage = json.loads(body)["usage"]
    assert status["budget"]["used_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert status["usage"]["requests_last_minute"] == 2


async def test_no_prompt_or_answer_text_in_redis_or_logs(
    cache_gw: app.Gateway,
    customer: Customer,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    access_lines: AccessLines,
) -> None:
    caplog.set_level(logging.DEBUG)
    prompt_marker = f"PROMPTMARK{secrets.token_hex(6)}"
    answer_marker = f"ANSWERMARK{secrets.token_hex(6)}"
    tool = {
        "name": "record",
        "description": "record a value",
        "input_schema": {
            "type": "object",
            "properties": {"value": {"type": "string", "enum": [answer_marker]}},
        },
    }
    request = {
        **prompt(f"remember {prompt_marker}"),
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": "record"},
    }
    async with client_for(cache_gw, customer) as client:
        for stream in (False, True):
            for _ in range(2):
                raw = await client.messages.with_raw_response.create(**request, stream=stream)
                text = (await raw.read()).decode()
                assert answer_marker in (streamed_json(text) if stream else text)
                await cache_gw.state.tasks.settle(5.0)
            assert raw.headers["x-cache"] == "HIT"
    assert cache_gw.state.metrics.respcache_stored._value.get() > 0
    prefix = cache_gw.state.config.redis_prefix
    entries = [key async for key in redis.scan_iter(match=f"{prefix}respcache:*", count=1000)]
    assert len(entries) == 2
    for key in entries:  # prefix + 64 hex digits, value nonce + ciphertext
        assert len(key) == len(f"{prefix}respcache:".encode()) + 64
    markers = (prompt_marker.encode(), answer_marker.encode())
    scanned = 0
    async for key in redis.scan_iter(count=1000):  # the whole database
        scanned += 1
        for blob in [key, *await redis_values(redis, key)]:
            assert not any(marker in blob for marker in markers), key
    assert scanned >= len(entries)
    # The gateway's log records (the SDK's own debug log, client side, quotes the request).
    logged = [
        record.getMessage()
        for record in caplog.records
        if record.name.split(".")[0] not in CLIENT_LOGGERS
    ]
    assert any(record.name.startswith("alicode_gw") for record in caplog.records)
    logged += [json.dumps(line) for line in access_lines.lines]
    assert not any(m in line for line in logged for m in (prompt_marker, answer_marker))
    outcomes = [line["response_cache"] for line in access_lines.lines]
    assert outcomes == ["MISS", "HIT", "MISS", "HIT"]


def streamed_json(sse: str) -> str:
    """The tool input a stream sent, put together from its ``input_json_delta`` pieces."""
    pieces = []
    for line in sse.splitlines():
        if line.startswith("data: "):
            delta = json.loads(line[6:]).get("delta") or {}
            pieces.append(delta.get("partial_json", ""))
    return "".join(pieces)


async def redis_values(redis: Redis, key: bytes) -> list[bytes]:
    """Every byte string a key holds, whatever its type."""
    kind = (await redis.type(key)).decode()
    if kind == "string":
        value = await redis.get(key)
        return [] if value is None else [value]
    if kind == "hash":
        return [part for pair in (await redis.hgetall(key)).items() for part in pair]
    if kind == "list":
        return await redis.lrange(key, 0, -1)
    if kind == "set":
        return list(await redis.smembers(key))
    if kind == "zset":
        return await redis.zrange(key, 0, -1)
    if kind == "stream":
        return [
            part
            for _id, fields in await redis.xrange(key)
            for pair in fields.items()
            for part in pair
        ]
    return []  # gone since the scan


async def test_an_unreachable_cache_store_never_fails_a_request(
    cache_gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    cache = cache_gw.state.respcache
    assert cache is not None
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = RespConnection(port=probe.getsockname()[1])
    cache._redis, live = dead, cache._redis  # fault injection: Redis gone for the cache
    request = prompt("redis down")
    try:
        async with client_for(cache_gw, customer) as client:
            for _ in range(2):
                raw, _ = await create(client, request)
                assert raw.headers["x-cache"] == "MISS"
                await cache_gw.state.tasks.settle(5.0)
    finally:
        cache._redis = live
    assert len(upstream_exchanges(mock_upstream)) == 2


async def test_concurrent_hits_and_misses_add_up_in_the_ledger(
    cache_gateway: CacheGateway, db: asyncpg.Connection
) -> None:
    gw = await cache_gateway(response_cache_hit_pct=30)
    customer = await make_customer(db)
    stored = prompt("stored")
    async with client_for(gw, customer) as client:
        await create(client, stored)
        await gw.state.tasks.settle(5.0)
        before = await balance(gw, db, customer.email)
        requests = [stored] * 12 + [prompt("fresh") for _ in range(6)]
        answers = await asyncio.gather(*(create(client, request) for request in requests))
    outcomes = [raw.headers["x-cache"] for raw, _ in answers]
    assert outcomes == ["HIT"] * 12 + ["MISS"] * 6
    spent = before - await balance(gw, db, customer.email)
    rows = [(await ledger_rows(db, raw.headers["request-id"]))[0] for raw, _ in answers]
    assert spent == -sum(row["amount_nanos"] for row in rows) > 0
    assert [row["cache_hit"] for row in rows] == [True] * 12 + [False] * 6
