"""POST /v1/messages through the gateway, driven by the official anthropic SDK."""

from __future__ import annotations

import io
import json

import aiohttp
import anthropic
import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.identity import accounts
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
from tests.support.frames import locals_holding
from tests.support.gateway import UPSTREAM_KEYS

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


async def test_create_matches_upstream_and_bills_exactly(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream, db: asyncpg.Connection
) -> None:
    before = await balance(gw, db, customer.email)
    async with client_for(gw, customer) as client:
        raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hello there"}]
        )
    message = await raw.parse()
    request_id = raw.headers["request-id"]
    sent = upstream_exchanges(mock_upstream)[-1]
    upstream_message = json.loads(bytes(sent.response_bytes))
    # The body is relayed as received.
    assert message.model_dump(exclude_none=True)["content"] == upstream_message["content"]
    assert message.usage.output_tokens == upstream_message["usage"]["output_tokens"]
    assert message.id == upstream_message["id"]
    rows = await ledger_rows(db, request_id)
    assert len(rows) == 1
    cost = -int(rows[0]["amount_nanos"])
    assert cost > 0
    # The answer states its cost before settlement runs (from the hold's price
    # snapshot); settlement records the very same figure.
    assert (
        raw.headers["x-alicode-cost-usd"] == format_usd(rows[0]["cost_nanos"]) == format_usd(cost)
    )
    assert before - await balance(gw, db, customer.email) == cost
    assert rows[0]["input_tokens"] == upstream_message["usage"]["input_tokens"]
    assert rows[0]["output_tokens"] == upstream_message["usage"]["output_tokens"]


async def test_stream_text_and_final_message(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream, db: asyncpg.Connection
) -> None:
    async with client_for(gw, customer) as client:
        async with client.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "stream me"}]
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
            request_id = stream.response.headers["request-id"]
    assert text and text == final.content[0].text
    assert final.stop_reason == "end_turn"
    rows = await ledger_rows(db, request_id)
    assert len(rows) == 1 and rows[0]["output_tokens"] == final.usage.output_tokens
    assert rows[0]["status"] == "complete"


async def test_a_stream_does_not_hold_its_prompt(gw: app.Gateway, customer: Customer) -> None:
    """Once the request is upstream, no frame of its handling keeps the body or its
    decoded form while the answer streams (a long stream of a large prompt would
    otherwise hold both for its whole length)."""
    marker = "prompt-marker-" + "p" * 2000
    prompt = f"{marker} [[mock: chunk_delay_ms=50 words=20]]"
    async with client_for(gw, customer) as client:
        async with client.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": prompt}]
        ) as stream:
            async for _ in stream.text_stream:  # the relay is under way
                break
            held = locals_holding(marker, through="relay_stream")
            await stream.get_final_message()
    assert held == []


async def test_stream_bytes_are_identical_and_headers_filtered(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    payload = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "bytes please [[mock: words=30]]"}],
    }
    headers = {
        "x-api-key": customer.key,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31,files-api-2025-04-14",
        "cookie": "session=abc",
        "user-agent": "customer-tool/1.0",
        "x-forwarded-for": "203.0.113.9",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/v1/messages", json=payload, headers=headers) as resp:
            assert resp.status == 200
            received = await resp.read()
            response_headers = resp.headers
    sent = upstream_exchanges(mock_upstream)[-1]
    assert received == bytes(sent.response_bytes)
    assert response_headers["content-type"].startswith("text/event-stream")
    assert response_headers["x-accel-buffering"] == "no"
    assert response_headers["request-id"].startswith("req_")
    assert not [h for h in response_headers if h.lower().startswith("anthropic-ratelimit")]
    # What went upstream: the pool's credential, the beta flags, nothing of the client's.
    assert sent.api_key in UPSTREAM_KEYS
    assert sent.headers["anthropic-beta"] == headers["anthropic-beta"]
    assert "cookie" not in sent.headers and "x-forwarded-for" not in sent.headers
    assert sent.headers["user-agent"].startswith("alicode_gw/")
    assert customer.key not in json.dumps(sent.headers)
    assert sent.body == json.dumps(payload).encode()


async def test_tool_use_round_trip(gw: app.Gateway, customer: Customer) -> None:
    messages: list[dict] = [{"role": "user", "content": "Weather in Paris?"}]
    async with client_for(gw, customer) as client:
        async with client.messages.stream(
            model=MODEL,
            max_tokens=200,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "tool", "name": "get_weather"},
            messages=messages,
        ) as stream:
            streamed = await stream.get_final_message()
        tool_use = next(b for b in streamed.content if b.type == "tool_use")
        assert streamed.stop_reason == "tool_use"
        assert tool_use.name == "get_weather" and "city" in tool_use.input
        plain = await client.messages.create(
            model=MODEL,
            max_tokens=200,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "tool", "name": "get_weather"},
            messages=messages,
        )
        assert next(b for b in plain.content if b.type == "tool_use").input == tool_use.input
        messages += [
            {"role": "assistant", "content": [b.model_dump() for b in streamed.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_use.id, "content": "Sunny, 21C"}
                ],
            },
        ]
        answer = await client.messages.create(
            model=MODEL, max_tokens=200, tools=[WEATHER_TOOL], messages=messages
        )
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"


async def test_thinking_blocks(gw: app.Gateway, customer: Customer) -> None:
    async with client_for(gw, customer) as client:
        async with client.messages.stream(
            model=MODEL,
            max_tokens=4000,
            thinking={"type": "enabled", "budget_tokens": 2000},
            messages=[{"role": "user", "content": "think"}],
        ) as stream:
            final = await stream.get_final_message()
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature


async def test_alias_is_resolved_visibly(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream, db: asyncpg.Connection
) -> None:
    target = await db.fetchval("SELECT alias_of FROM models WHERE id = 'claude-3-7-sonnet-latest'")
    payload = {
        "model": "claude-3-7-sonnet-latest",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "alias"}],
    }
    headers = {"x-api-key": customer.key, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/v1/messages", json=payload, headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 200
            assert resp.headers["x-alicode-model"] == target
    assert body["model"] == target
    assert json.loads(upstream_exchanges(mock_upstream)[-1].body)["model"] == target


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 5}, "messages"),
        ({"model": MODEL, "max_tokens": 0, "messages": [{"role": "user"}]}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
        (
            {"model": "claude-nope-1", "max_tokens": 5, "messages": [{"role": "user"}]},
            "claude-nope",
        ),
        ({"model": MODEL, "max_tokens": 5, "messages": [{}], "stream": "yes"}, "stream"),
        ({"model": MODEL, "max_tokens": 10**9, "messages": [{}]}, "max_tokens: 1000000000 >"),
        ({"model": MODEL, "max_tokens": 10**30, "messages": [{}]}, "max_tokens"),
    ],
)
async def test_invalid_requests_never_reach_upstream(
    gw: app.Gateway,
    customer: Customer,
    mock_upstream: MockUpstream,
    payload: dict,
    fragment: str,
) -> None:
    before = len(upstream_exchanges(mock_upstream))
    async with client_for(gw, customer) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.post("/v1/messages", body=payload, cast_to=object)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert fragment in info.value.body["error"]["message"]
    assert info.value.request_id and info.value.request_id.startswith("req_")
    assert len(upstream_exchanges(mock_upstream)) == before


async def test_bad_json_and_oversized_body(gw: app.Gateway, customer: Customer) -> None:
    headers = {"x-api-key": customer.key, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/v1/messages", data=b"{", headers=headers) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
        big = b'{"model": "' + b"x" * (51 * 1024 * 1024) + b'"}'
        async with http.post(
            gw.url + "/v1/messages", data=io.BytesIO(big), headers=headers
        ) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["type"] == "request_too_large"


async def test_model_allow_list_is_403(gw: app.Gateway, db: asyncpg.Connection) -> None:
    from tests.support.customers import make_customer

    limited = await make_customer(db, models=["claude-haiku-4-5"])
    async with client_for(gw, limited) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as info:
            await client.messages.create(
                model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
    assert MODEL in info.value.body["error"]["message"]


async def test_upstream_403_passes_through_and_keeps_the_pool(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    before = await balance(gw, db, customer.email)
    async with client_for(gw, customer) as client:
        for _ in range(3):
            with pytest.raises(anthropic.PermissionDeniedError):
                await client.messages.create(
                    model=MODEL,
                    max_tokens=5,
                    messages=[{"role": "user", "content": "[[mock: status=403]]"}],
                )
        # a customer's request never takes credentials out of the pool
        assert all(c["state"] == "healthy" for c in gw.state.keypool.snapshot())
        await client.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "still fine"}]
        )
    assert await balance(gw, db, customer.email) < before


async def test_upstream_client_error_passes_through_unbilled(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    before = await balance(gw, db, customer.email)
    async with client_for(gw, customer) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(
                model=MODEL,
                max_tokens=5,
                messages=[{"role": "user", "content": "[[mock: status=400]]"}],
            )
    assert info.value.request_id.startswith("req_")
    assert await balance(gw, db, customer.email) == before
    assert gw.state.keypool.snapshot()[0]["state"] == "healthy"


async def test_relayed_upstream_error_carries_the_gateways_request_id(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    """One id per answer: the body's ``request_id`` is the ``request-id`` header (the one
    the gateway logs); the upstream's id travels in ``x-upstream-request-id``."""
    async with client_for(gw, customer) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(
                model=MODEL,
                max_tokens=5,
                messages=[{"role": "user", "content": "[[mock: status=400]]"}],
            )
    response = info.value.response
    upstream_id = upstream_exchanges(mock_upstream)[-1].request_id
    assert upstream_id.startswith("req_")
    assert info.value.request_id == response.headers["request-id"]
    assert response.json()["request_id"] == response.headers["request-id"] != upstream_id
    assert response.headers["x-upstream-request-id"] == upstream_id
    assert all(c["state"] == "healthy" for c in gw.state.keypool.snapshot())


async def test_mid_conversation_system_turn_is_served_and_billed(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    """Claude Code's request shape for its newest models: the beta header and a
    ``system`` turn inside ``messages`` pass through to the upstream unchanged."""
    beta = "claude-code-20250219,mid-conversation-system-2026-04-07"
    messages = [
        {"role": "user", "content": "first"},
        {"role": "system", "content": "Mid-conversation instructions."},
        {"role": "user", "content": "second"},
    ]
    async with client_for(gw, customer) as client:
        raw = await client.messages.with_raw_response.create(
            model="claude-opus-4-8",
            max_tokens=64,
            messages=messages,  # type: ignore[arg-type]
            extra_headers={"anthropic-beta": beta},
        )
        counted = await client.messages.count_tokens(
            model="claude-opus-4-8",
            messages=messages,  # type: ignore[arg-type]
            extra_headers={"anthropic-beta": beta},
        )
    assert (await raw.parse()).content[0].type == "text" and counted.input_tokens > 0
    sent = upstream_exchanges(mock_upstream)[-1]
    assert sent.headers["anthropic-beta"] == beta
    assert json.loads(sent.body)["messages"] == messages
    (row,) = await ledger_rows(db, raw.request_id)
    assert row["model"] == "claude-opus-4-*" and row["cost_nanos"] > 0


async def test_an_accounts_remembered_token_counts_serve_its_keys_only(
    gw: app.Gateway,
    customer: Customer,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The estimate that sizes the hold remembers long texts' counts for the account:
    a second key of the account resends the conversation without it being encoded
    again; another account's identical conversation is encoded in full."""
    encoded: list[int] = []
    encoding = gw.state.tokens._encoding
    encode = encoding.encode_ordinary

    def counting(text: str) -> list[int]:
        encoded.append(len(text))
        return encode(text)

    monkeypatch.setattr(encoding, "encode_ordinary", counting)
    system = "You are a careful coding agent; read the files before changing them. " * 12
    turn = "The tests fail in the parser module; find out why and fix it, please. " * 12
    _, second_key = await accounts.create_key(db, customer.account_id, "second")
    other = await make_customer(db)

    async def send(key: str) -> int:
        before = sum(encoded)
        async with anthropic.AsyncAnthropic(api_key=key, base_url=gw.url, max_retries=0) as client:
            await client.messages.create(
                model=MODEL,
                max_tokens=16,
                system=system,
                messages=[{"role": "user", "content": turn}],
            )
        return sum(encoded) - before

    first = await send(customer.key)
    assert first >= len(system) + len(turn)
    assert await send(second_key) < len(turn) / 10  # the same account: remembered
    assert await send(other.key) == first  # another account: encoded again
