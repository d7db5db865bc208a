"""The mock upstream, driven by the official anthropic SDK and by a raw HTTP client."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import pytest

from alicode_gw.dev.mock_models import MODELS
from alicode_gw.dev.mock_upstream import DEFAULT_MOCK_KEY, MockUpstream, serve
from alicode_gw.upstream.sse import SSEEvent, SSEParser, UsageScanner

KEY = "sk-ant-test-mock-key-AAAA1111"
KEY2 = "sk-ant-test-mock-key-BBBB2222"
MODEL = "claude-sonnet-4-6"
VERSION = {"anthropic-version": "2023-06-01"}
# A connection cut mid-stream surfaces from the SDK as its HTTP library's error.
TRANSPORT_ERRORS = (anthropic.APIConnectionError, httpx2.TransportError)

WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
            "hourly": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["city"],
    },
}
OTHER_TOOL: dict[str, Any] = {
    "name": "lookup",
    "description": "Look something up",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream([KEY, KEY2]) as upstream:
        yield upstream


@pytest.fixture
async def client(mock: MockUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(api_key=KEY, base_url=mock.url, max_retries=0)
    yield sdk
    await sdk.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def raw_post(
    http: aiohttp.ClientSession,
    mock: MockUpstream,
    body: Any,
    *,
    path: str = "/v1/messages",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    hdrs = {"x-api-key": KEY, **VERSION, **(headers or {})}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(mock.url + path, data=data, headers=hdrs) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def until(predicate: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition never became true")


def parse(raw: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    return parser.feed(raw) + parser.flush()


# ---------------------------------------------------------------- messages


async def test_create_text_is_deterministic(client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(model=MODEL, max_tokens=100, messages=user("Hello"))
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.id.startswith("msg_") and len(msg.id) == 28
    assert msg.model == MODEL
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert len(msg.content) == 1 and msg.content[0].type == "text"
    words = msg.content[0].text.split(" ")
    assert len(words) == 12
    assert msg.usage.output_tokens == 12
    assert msg.usage.input_tokens > 0
    assert msg.usage.cache_creation_input_tokens == 0
    assert msg.usage.cache_read_input_tokens == 0
    assert msg.usage.service_tier == "standard"

    again = await client.messages.create(model=MODEL, max_tokens=100, messages=user("Hello"))
    other = await client.messages.create(model=MODEL, max_tokens=100, messages=user("Bye"))
    assert again.content[0].text == msg.content[0].text  # type: ignore[union-attr]
    assert other.content[0].text != msg.content[0].text  # type: ignore[union-attr]
    assert again.id != msg.id


async def test_json_response_shape(http: aiohttp.ClientSession, mock: MockUpstream) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": user("shape")}
    status, headers, raw = await raw_post(http, mock, body)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    msg = json.loads(raw)
    assert list(msg) == [
        "id",
        "type",
        "role",
        "model",
        "content",
        "stop_reason",
        "stop_sequence",
        "stop_details",
        "usage",
    ]
    assert set(msg["usage"]) == {
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
        "output_tokens",
        "service_tier",
    }
    assert msg["usage"]["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 0,
    }
    assert raw == json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()
    assert mock.exchanges[-1].response_bytes == raw


async def test_stream_text_and_final_message(client: anthropic.AsyncAnthropic) -> None:
    expected = await client.messages.create(model=MODEL, max_tokens=100, messages=user("Stream"))
    pieces = []
    async with client.messages.stream(
        model=MODEL, max_tokens=100, messages=user("Stream")
    ) as stream:
        async for text in stream.text_stream:
            pieces.append(text)
        final = await stream.get_final_message()
    assert len(pieces) == 12  # one text_delta per word (= per output token)
    assert "".join(pieces) == expected.content[0].text  # type: ignore[union-attr]
    assert final.content[0].text == expected.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 12
    assert final.usage.input_tokens == expected.usage.input_tokens
    assert final.model == MODEL


async def test_words_directive(client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(
        model=MODEL, max_tokens=100, messages=user("short please [[mock: words=5]]")
    )
    assert len(msg.content[0].text.split(" ")) == 5  # type: ignore[union-attr]
    assert msg.usage.output_tokens == 5


async def test_max_tokens_truncates(client: anthropic.AsyncAnthropic) -> None:
    full = await client.messages.create(model=MODEL, max_tokens=100, messages=user("Long"))
    msg = await client.messages.create(model=MODEL, max_tokens=5, messages=user("Long"))
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 5
    text = msg.content[0].text  # type: ignore[union-attr]
    assert text.split(" ") == full.content[0].text.split(" ")[:5]  # type: ignore[union-attr]
    async with client.messages.stream(model=MODEL, max_tokens=5, messages=user("Long")) as s:
        final = await s.get_final_message()
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 5


async def test_stop_sequence(client: anthropic.AsyncAnthropic) -> None:
    full = await client.messages.create(model=MODEL, max_tokens=100, messages=user("Stops"))
    words = full.content[0].text.split(" ")  # type: ignore[union-attr]
    stop = words[4]
    cut = words.index(stop)
    msg = await client.messages.create(
        model=MODEL, max_tokens=100, messages=user("Stops"), stop_sequences=["NEVER", stop]
    )
    assert msg.stop_reason == "stop_sequence"
    assert msg.stop_sequence == stop
    assert msg.content[0].text == " ".join(words[:cut])  # type: ignore[union-attr]
    async with client.messages.stream(
        model=MODEL, max_tokens=100, messages=user("Stops"), stop_sequences=[stop]
    ) as s:
        final = await s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


async def test_tool_use_round_trip(client: anthropic.AsyncAnthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 500,
        "tools": [OTHER_TOOL, WEATHER_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": user("Weather in Paris?"),
    }
    msg = await client.messages.create(**kwargs)
    assert msg.stop_reason == "tool_use"
    # a forced tool_choice gets no text preamble, as with the real API
    assert [b.type for b in msg.content] == ["tool_use"]
    block = msg.content[0]
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.id.startswith("toolu_") and len(block.id) == 30
    assert set(block.input) == {"city", "unit", "days", "hourly", "tags"}
    assert block.input["unit"] == "celsius"
    assert isinstance(block.input["days"], int) and isinstance(block.input["hourly"], bool)
    assert isinstance(block.input["tags"], list) and isinstance(block.input["city"], str)

    async with client.messages.stream(**kwargs) as stream:
        json_pieces = [e.partial_json async for e in stream if e.type == "input_json"]
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    tool = final.content[0]
    assert tool.type == "tool_use" and tool.name == "get_weather"
    assert tool.input == block.input  # reassembled from input_json_delta by the SDK
    assert json_pieces[0] == "" and len(json_pieces) > 3
    assert json.loads("".join(json_pieces)) == block.input
    assert final.usage.output_tokens == msg.usage.output_tokens


async def test_tool_mode_directive_gives_text_then_tool(client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(
        model=MODEL,
        max_tokens=500,
        tools=[OTHER_TOOL],
        messages=user("find it [[mock: mode=tool]]"),
    )
    assert [b.type for b in msg.content] == ["text", "tool_use"]
    assert msg.content[1].name == "lookup"  # type: ignore[union-attr]
    assert msg.stop_reason == "tool_use"
    plain = await client.messages.create(
        model=MODEL, max_tokens=500, tools=[OTHER_TOOL], messages=user("find it")
    )
    assert [b.type for b in plain.content] == ["text"] and plain.stop_reason == "end_turn"


async def test_thinking_blocks_with_signature(client: anthropic.AsyncAnthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": user("Think about it"),
    }
    msg = await client.messages.create(**kwargs)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    thinking = msg.content[0]
    assert thinking.type == "thinking" and thinking.thinking and len(thinking.signature) > 40
    async with client.messages.stream(**kwargs) as stream:
        kinds = [e.type async for e in stream]
        final = await stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == thinking.thinking
    assert final.content[0].signature == thinking.signature
    assert final.content[1].text == msg.content[1].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == msg.usage.output_tokens > 12


async def test_thinking_budget_validated(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        await client.messages.create(
            model=MODEL,
            max_tokens=1000,
            thinking={"type": "enabled", "budget_tokens": 2000},
            messages=user("x"),
        )


async def test_prompt_cache_usage(client: anthropic.AsyncAnthropic) -> None:
    system: Any = [
        {"type": "text", "text": "You are a terse assistant. " * 200},  # past the minimum
        {"type": "text", "text": "Rules: " * 30, "cache_control": {"type": "ephemeral"}},
    ]
    first = await client.messages.create(
        model=MODEL, max_tokens=50, system=system, messages=user("Q1")
    )
    assert first.usage.cache_creation_input_tokens > 0
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == (
        first.usage.cache_creation_input_tokens
    )
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == 0

    # Same prefix, different question: the prefix is read, nothing new is written.
    async with client.messages.stream(
        model=MODEL, max_tokens=50, system=system, messages=user("Q2, a longer one")
    ) as stream:
        second = await stream.get_final_message()
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens > first.usage.input_tokens

    # Token counting sees the whole prompt, cached or not.
    count = await client.messages.count_tokens(model=MODEL, system=system, messages=user("Q1"))
    usage = first.usage
    assert count.input_tokens == (
        usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    )


async def test_prompt_cache_ttl_split(client: anthropic.AsyncAnthropic) -> None:
    long_tool = {**WEATHER_TOOL, "description": "Current weather for a city. " * 200}
    tools: Any = [{**long_tool, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    messages: Any = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "context " * 50, "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "question"},
            ],
        }
    ]
    msg = await client.messages.create(model=MODEL, max_tokens=50, tools=tools, messages=messages)
    cc = msg.usage.cache_creation
    assert cc is not None and cc.ephemeral_1h_input_tokens > 0 and cc.ephemeral_5m_input_tokens > 0
    assert msg.usage.cache_creation_input_tokens == (
        cc.ephemeral_1h_input_tokens + cc.ephemeral_5m_input_tokens
    )
    # Changing only the 5m part re-reads the 1h tool prefix and rewrites the rest.
    messages[0]["content"][0]["text"] = "other context " * 50
    again = await client.messages.create(model=MODEL, max_tokens=50, tools=tools, messages=messages)
    assert again.usage.cache_read_input_tokens == cc.ephemeral_1h_input_tokens
    cc2 = again.usage.cache_creation
    assert cc2 is not None and cc2.ephemeral_1h_input_tokens == 0
    assert cc2.ephemeral_5m_input_tokens > 0


async def test_count_tokens(client: anthropic.AsyncAnthropic) -> None:
    count = await client.messages.count_tokens(model=MODEL, messages=user("Count me"))
    msg = await client.messages.create(model=MODEL, max_tokens=10, messages=user("Count me"))
    assert count.input_tokens == msg.usage.input_tokens > 0
    bigger = await client.messages.count_tokens(
        model=MODEL, messages=user("Count me " * 100), tools=[WEATHER_TOOL]
    )
    assert bigger.input_tokens > count.input_tokens + 100


# ---------------------------------------------------------------- models


async def test_models_list_and_retrieve(client: anthropic.AsyncAnthropic) -> None:
    ids = [m.id async for m in client.models.list()]
    assert ids == [m[0] for m in MODELS]
    assert {
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        "claude-sonnet-4-6",
        "claude-opus-4-5",
        "claude-opus-4-6",
        "claude-opus-4-7",
    } == set(ids)
    paged = [m.id async for m in client.models.list(limit=4)]  # follows after_id
    assert paged == ids
    page = await client.models.list(limit=2)
    assert [m.id for m in page.data] == ids[:2]
    assert page.has_more is True and page.first_id == ids[0] and page.last_id == ids[1]
    before = await client.models.list(before_id=ids[3], limit=2)
    assert [m.id for m in before.data] == ids[1:3] and before.has_more is True
    model = await client.models.retrieve("claude-opus-4-7")
    assert model.id == "claude-opus-4-7" and model.type == "model"
    assert model.display_name == "Claude Opus 4.7" and model.created_at.year >= 2025
    with pytest.raises(anthropic.NotFoundError) as err:
        await client.models.retrieve("claude-nonexistent-9")
    assert err.value.type == "not_found_error"
    dumped = model.model_dump()  # today's ModelInfo: limits and capabilities
    assert dumped["max_input_tokens"] == 200_000 and dumped["max_tokens"] == 128_000
    assert dumped["capabilities"]["thinking"]["types"]["adaptive"]["supported"] is True


async def test_models_served_are_the_instance_list(
    client: anthropic.AsyncAnthropic, mock: MockUpstream
) -> None:
    mock.models.insert(0, ("claude-sonnet-5", "Claude Sonnet 5", "2026-11-20T00:00:00Z"))
    mock.models.remove(("claude-opus-4-5", "Claude Opus 4.5", "2025-11-24T00:00:00Z"))
    ids = [m.id async for m in client.models.list(limit=3)]
    assert ids[0] == "claude-sonnet-5" and "claude-opus-4-5" not in ids
    assert (await client.models.retrieve("claude-sonnet-5")).display_name == "Claude Sonnet 5"


MID_SYSTEM = [
    {"role": "user", "content": "first"},
    {"role": "system", "content": "Mid-conversation instructions."},
    {"role": "user", "content": "second"},
]


async def test_system_turn_under_the_mid_conversation_beta(
    http: aiohttp.ClientSession, mock: MockUpstream
) -> None:
    """Claude Code's current request shape: a ``system`` turn inside ``messages``, with
    its beta among others; without the beta it is the API's role error."""
    body = {"model": "claude-opus-4-8", "max_tokens": 64, "messages": MID_SYSTEM}
    beta = {"anthropic-beta": "claude-code-20250219,mid-conversation-system-2026-04-07"}
    status, _, raw = await raw_post(http, mock, body, headers=beta)
    assert status == 200 and json.loads(raw)["content"][0]["type"] == "text"
    status, _, raw = await raw_post(http, mock, {**body, "stream": True}, headers=beta)
    assert status == 200 and b"message_stop" in raw
    status, _, raw = await raw_post(
        http, mock, body, path="/v1/messages/count_tokens", headers=beta
    )
    assert status == 200 and json.loads(raw)["input_tokens"] > 0
    newer = {"anthropic-beta": "claude-code-20250219,per-turn-control-2026-07-01"}
    status, _, raw = await raw_post(http, mock, body, headers=newer)
    assert status == 200
    status, _, raw = await raw_post(http, mock, body)
    assert status == 400
    assert json.loads(raw)["error"]["message"] == (
        "messages.1.role: Input should be 'user' or 'assistant'"
    )


# ---------------------------------------------------------------- auth and validation


async def test_wrong_key(mock: MockUpstream) -> None:
    async with anthropic.AsyncAnthropic(
        api_key="sk-ant-wrong", base_url=mock.url, max_retries=0
    ) as bad:
        with pytest.raises(anthropic.AuthenticationError) as err:
            await bad.messages.create(model=MODEL, max_tokens=10, messages=user("x"))
        with pytest.raises(anthropic.AuthenticationError):
            await bad.models.list()
    assert err.value.status_code == 401
    assert err.value.type == "authentication_error"
    assert err.value.api_message == "invalid x-api-key"
    assert err.value.request_id and err.value.request_id.startswith("req_")
    assert isinstance(err.value.body, dict) and err.value.body["request_id"] == err.value.request_id
    assert b"sk-ant-wrong" not in mock.exchanges[-1].response_bytes


async def test_bearer_auth_and_missing_key(http: aiohttp.ClientSession, mock: MockUpstream) -> None:
    body = {"model": MODEL, "max_tokens": 5, "messages": user("hi")}
    url = mock.url + "/v1/messages"
    async with http.post(
        url, json=body, headers={"authorization": f"Bearer {KEY2}", **VERSION}
    ) as r:
        assert r.status == 200
    assert mock.exchanges[-1].api_key == KEY2
    async with http.post(url, json=body, headers=VERSION) as r:
        assert r.status == 401
        assert (await r.json())["error"]["type"] == "authentication_error"
    assert mock.exchanges[-1].api_key is None


async def test_missing_version_header(http: aiohttp.ClientSession, mock: MockUpstream) -> None:
    async with http.get(mock.url + "/v1/models", headers={"x-api-key": KEY}) as r:
        assert r.status == 400
        err = await r.json()
    assert err["type"] == "error"
    assert err["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "parsing the body"),
        ([1, 2], "JSON object"),
        ({"max_tokens": 5, "messages": user("x")}, "model"),
        ({"model": 7, "max_tokens": 5, "messages": user("x")}, "model"),
        ({"model": MODEL, "messages": user("x")}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 0, "messages": user("x")}, "max_tokens"),
        ({"model": MODEL, "max_tokens": "5", "messages": user("x")}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 5}, "messages"),
        ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
        ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]}, "role"),
        ({"model": MODEL, "max_tokens": 5, "messages": user("[[mock: nope=1]]")}, "directive"),
        ({"model": MODEL, "max_tokens": 5, "messages": user("[[mock: status=abc]]")}, "status"),
    ],
)
async def test_validation(
    http: aiohttp.ClientSession, mock: MockUpstream, body: Any, fragment: str
) -> None:
    status, headers, raw = await raw_post(http, mock, body)
    assert status == 400
    err = json.loads(raw)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert fragment in err["error"]["message"]
    assert err["request_id"] == headers["request-id"]


async def test_count_tokens_does_not_need_max_tokens(
    http: aiohttp.ClientSession, mock: MockUpstream
) -> None:
    body = {"model": MODEL, "messages": user("x")}
    status, _, raw = await raw_post(http, mock, body, path="/v1/messages/count_tokens")
    assert status == 200 and set(json.loads(raw)) == {"input_tokens"}
    status, _, _ = await raw_post(http, mock, {"model": MODEL}, path="/v1/messages/count_tokens")
    assert status == 400


async def test_unknown_path_and_wrong_method(
    http: aiohttp.ClientSession, mock: MockUpstream
) -> None:
    hdrs = {"x-api-key": KEY, **VERSION}
    async with http.get(mock.url + "/v1/nothing", headers=hdrs) as r:
        assert r.status == 404
        assert (await r.json())["error"]["type"] == "not_found_error"
    async with http.get(mock.url + "/v1/messages", headers=hdrs) as r:
        assert r.status == 405
        assert r.headers["allow"] == "POST"
        assert (await r.json())["type"] == "error"
    async with http.delete(mock.url + "/v1/models/claude-opus-4-7", headers=hdrs) as r:
        assert r.status == 405


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "exc", "etype"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
async def test_fault_status_in_prompt(
    client: anthropic.AsyncAnthropic, status: int, exc: type[Exception], etype: str
) -> None:
    with pytest.raises(exc) as err:
        await client.messages.create(
            model=MODEL, max_tokens=10, messages=user(f"hi [[mock: status={status}]]")
        )
    assert isinstance(err.value, anthropic.APIStatusError)
    assert err.value.status_code == status
    assert err.value.type == etype
    assert err.value.request_id
    with pytest.raises(exc):  # the same for a streaming request
        async with client.messages.stream(
            model=MODEL, max_tokens=10, messages=user(f"hi [[mock: status={status}]]")
        ) as stream:
            await stream.get_final_message()


async def test_rate_limit_headers(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as err:
        await client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=user("hi"),
            extra_headers={"x-mock-fault": "status=429 retry_after=2"},
        )
    headers = err.value.response.headers
    assert headers["retry-after"] == "2"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")


async def test_header_directive_overrides_prompt(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.InternalServerError):
        await client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=user("[[mock: status=429]]"),
            extra_headers={"x-mock-fault": "status=500"},
        )


async def test_directive_only_in_last_user_message(client: anthropic.AsyncAnthropic) -> None:
    messages: Any = [
        {"role": "user", "content": "earlier [[mock: status=500]]"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "now [[mock: words=3]]"}]},
    ]
    msg = await client.messages.create(model=MODEL, max_tokens=10, messages=messages)
    assert len(msg.content[0].text.split(" ")) == 3  # type: ignore[union-attr]


async def test_only_key(mock: MockUpstream, client: anthropic.AsyncAnthropic) -> None:
    prompt = user(f"hi [[mock: status=429 only_key={KEY2},sk-other]]")
    ok = await client.messages.create(model=MODEL, max_tokens=100, messages=prompt)
    assert ok.stop_reason == "end_turn"
    async with anthropic.AsyncAnthropic(api_key=KEY2, base_url=mock.url, max_retries=0) as c2:
        with pytest.raises(anthropic.RateLimitError):
            await c2.messages.create(model=MODEL, max_tokens=10, messages=prompt)
    assert [e.status for e in list(mock.exchanges)[-2:]] == [200, 429]
    assert [e.api_key for e in list(mock.exchanges)[-2:]] == [KEY, KEY2]


async def test_error_after(client: anthropic.AsyncAnthropic, mock: MockUpstream) -> None:
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as err:
        async with client.messages.stream(
            model=MODEL, max_tokens=100, messages=user("hi [[mock: error_after=5]]")
        ) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert err.value.type == "overloaded_error"
    assert len(texts) == 2  # message_start, block start, ping, 2 deltas, then the error
    names = [e.event for e in parse(bytes(mock.exchanges[-1].response_bytes))]
    assert names[-1] == "error" and len(names) == 6 and "message_stop" not in names
    assert mock.exchanges[-1].done and not mock.exchanges[-1].aborted


async def test_drop_after(client: anthropic.AsyncAnthropic, mock: MockUpstream) -> None:
    texts: list[str] = []
    with pytest.raises(TRANSPORT_ERRORS) as err:
        async with client.messages.stream(
            model=MODEL, max_tokens=100, messages=user("hi [[mock: drop_after=6]]")
        ) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert "incomplete" in str(err.value) or isinstance(err.value, anthropic.APIConnectionError)
    assert len(texts) == 3
    ex = mock.exchanges[-1]
    await until(lambda: ex.done)
    assert ex.aborted
    assert len(parse(bytes(ex.response_bytes))) == 6


async def test_drop_after_raw_client(http: aiohttp.ClientSession, mock: MockUpstream) -> None:
    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": user("raw drop")}
    received = bytearray()
    hdrs = {"x-api-key": KEY, "x-mock-fault": "drop_after=4", **VERSION}
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(mock.url + "/v1/messages", json=body, headers=hdrs) as r:
            assert r.status == 200
            async for chunk in r.content.iter_any():
                received += chunk
    assert bytes(received) == bytes(mock.exchanges[-1].response_bytes)
    assert [e.event for e in parse(bytes(received))] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
    ]


async def test_client_disconnect_mid_stream(
    http: aiohttp.ClientSession, mock: MockUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": user("bye")}
    hdrs = {"x-api-key": KEY, "x-mock-fault": "chunk_delay_ms=30 words=30", **VERSION}
    async with http.post(mock.url + "/v1/messages", json=body, headers=hdrs) as r:
        first = await r.content.readuntil(b"\n\n")
        assert first.startswith(b"event: message_start\n")
        r.close()
    ex = mock.exchanges[-1]
    await until(lambda: ex.done)
    assert ex.aborted and ex.status == 200
    assert b"message_stop" not in ex.response_bytes
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]


async def test_count_tokens_faults(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.OverloadedError):
        await client.messages.count_tokens(
            model=MODEL, messages=user("x"), extra_headers={"x-mock-fault": "status=529"}
        )
    with pytest.raises(anthropic.RateLimitError) as err:
        await client.messages.count_tokens(model=MODEL, messages=user("[[mock: status=429]]"))
    assert err.value.response.headers["retry-after"] == "1"


async def test_delays(client: anthropic.AsyncAnthropic) -> None:
    started = time.monotonic()
    await client.messages.create(
        model=MODEL, max_tokens=10, messages=user("[[mock: first_byte_delay_ms=200]]")
    )
    assert time.monotonic() - started >= 0.19
    started = time.monotonic()
    async with client.messages.stream(
        model=MODEL, max_tokens=100, messages=user("[[mock: chunk_delay_ms=20 words=4]]")
    ) as stream:
        await stream.get_final_message()
    # 4 words -> 10 events -> 9 gaps of 20 ms
    assert time.monotonic() - started >= 0.17


# ---------------------------------------------------------------- raw wire format


async def test_stream_raw_bytes(http: aiohttp.ClientSession, mock: MockUpstream) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 2000,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [WEATHER_TOOL],
        "messages": user("raw bytes please [[mock: mode=tool]]"),
    }
    # a small inter-event delay makes each event its own read on the client side
    hdrs = {"x-api-key": KEY, "x-mock-fault": "chunk_delay_ms=2", **VERSION}
    received = bytearray()
    chunks = 0
    async with http.post(mock.url + "/v1/messages", json=body, headers=hdrs) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["request-id"].startswith("req_")
        assert "anthropic-ratelimit-requests-limit" in resp.headers
        assert "anthropic-ratelimit-tokens-remaining" in resp.headers
        async for chunk in resp.content.iter_any():
            received += chunk
            chunks += 1
    ex = mock.exchanges[-1]
    assert ex.done and not ex.aborted and ex.status == 200
    assert bytes(received) == bytes(ex.response_bytes)
    assert chunks > 10

    events = parse(bytes(received))
    names = [e.event for e in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 3
    for ev in events:
        obj = json.loads(ev.data)
        assert obj["type"] == ev.event
        if ev.event == "ping":
            assert ev.data == '{"type": "ping"}'
        else:
            assert ev.data == json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    deltas = [json.loads(e.data)["delta"] for e in events if e.event == "content_block_delta"]
    kinds = [d["type"] for d in deltas]
    assert kinds[0] == "thinking_delta"
    assert kinds.index("signature_delta") < kinds.index("text_delta")
    assert kinds.index("text_delta") < kinds.index("input_json_delta")
    json_parts = [d["partial_json"] for d in deltas if d["type"] == "input_json_delta"]
    assert json_parts[0] == ""
    start = json.loads(events[0].data)["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["output_tokens"] == 1
    delta = json.loads(events[-2].data)
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert set(delta["usage"]) >= {"input_tokens", "output_tokens"}

    scanner = UsageScanner()
    for i in range(0, len(received), 37):
        scanner.feed(bytes(received[i : i + 37]))
    assert scanner.saw_message_start and scanner.saw_message_stop
    assert scanner.model == MODEL and scanner.message_id == start["id"]
    assert scanner.input_tokens == start["usage"]["input_tokens"]
    assert scanner.output_tokens == delta["usage"]["output_tokens"] > 8
    assert scanner.stop_reason == "tool_use"
    assert scanner.output_chars > 0


async def test_every_response_has_request_id_and_no_key(
    http: aiohttp.ClientSession, mock: MockUpstream, client: anthropic.AsyncAnthropic
) -> None:
    await client.messages.create(model=MODEL, max_tokens=10, messages=user("a"))
    async with client.messages.stream(model=MODEL, max_tokens=10, messages=user("b")) as s:
        await s.get_final_message()
    await client.messages.count_tokens(model=MODEL, messages=user("c"))
    await client.models.list()
    for fault in ("status=429", "status=401", "error_after=3"):
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(
                model=MODEL, max_tokens=10, messages=user(f"[[mock: {fault}]]")
            ) as s:
                await s.get_final_message()
    for hdrs in (
        {"x-api-key": KEY, **VERSION},
        {"x-api-key": KEY2},
        {"authorization": f"Bearer {KEY2}", **VERSION},
        {"x-api-key": KEY + "-wrong", **VERSION},
    ):
        async with http.post(mock.url + "/v1/messages", json={"x": 1}, headers=hdrs) as r:
            assert r.headers["request-id"].startswith("req_")
            for name, value in r.headers.items():
                assert KEY not in value and KEY2 not in value, name
    assert len(mock.exchanges) == 11
    for ex in mock.exchanges:
        assert ex.done and ex.status > 0
        assert KEY.encode() not in ex.response_bytes
        assert KEY2.encode() not in ex.response_bytes


async def test_exchange_record(mock: MockUpstream, client: anthropic.AsyncAnthropic) -> None:
    await client.messages.create(model=MODEL, max_tokens=10, messages=user("record me"))
    ex = mock.exchanges[-1]
    assert (ex.method, ex.path, ex.status, ex.api_key) == ("POST", "/v1/messages", 200, KEY)
    # The current SDK sends its API key as a bearer token, not as x-api-key.
    assert ex.headers["authorization"] == f"Bearer {KEY}"
    assert ex.headers["anthropic-version"]
    assert json.loads(ex.body)["messages"] == user("record me")
    assert json.loads(ex.response_bytes)["type"] == "message"
    assert ex.request_id.startswith("req_")


async def test_history_is_bounded() -> None:
    async with (
        MockUpstream([KEY], history=2) as small,
        aiohttp.ClientSession() as http,
    ):
        for path in ("/a", "/b", "/c"):
            async with http.get(small.url + path) as r:
                assert r.status == 404
        assert [e.path for e in small.exchanges] == ["/b", "/c"]


async def test_close_with_stream_in_flight() -> None:
    upstream = MockUpstream([KEY])
    await upstream.start()
    sdk = anthropic.AsyncAnthropic(api_key=KEY, base_url=upstream.url, max_retries=0)
    try:
        streaming = asyncio.Event()

        async def consume() -> None:
            async with sdk.messages.stream(
                model=MODEL, max_tokens=100, messages=user("[[mock: chunk_delay_ms=500]]")
            ) as stream:
                async for _ in stream.text_stream:
                    streaming.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(streaming.wait(), 10)
        started = time.monotonic()
        await upstream.close()
        assert time.monotonic() - started < 5
        with pytest.raises(TRANSPORT_ERRORS):
            await task
    finally:
        await sdk.close()


async def test_serve_runs_until_cancelled() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    task = asyncio.create_task(serve("127.0.0.1", port, [DEFAULT_MOCK_KEY]))
    try:
        sdk = anthropic.AsyncAnthropic(
            api_key=DEFAULT_MOCK_KEY, base_url=f"http://127.0.0.1:{port}", max_retries=0
        )
        async with sdk:
            for _ in range(100):
                try:
                    msg = await sdk.messages.create(model=MODEL, max_tokens=5, messages=user("x"))
                    break
                except anthropic.APIConnectionError:
                    await asyncio.sleep(0.02)
            else:
                pytest.fail("serve() never accepted a connection")
        assert msg.usage.output_tokens == 5
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------- prompt cache groups


def _cached_turn(system_words: int = 1500) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 20,
        "system": [
            {
                "type": "text",
                "text": "Follow the house style. " * system_words,
                "cache_control": {"type": "ephemeral"},
            }
        ],
        "messages": user("hello"),
    }


async def _usage(mock: MockUpstream, key: str, body: dict[str, Any]) -> Any:
    async with anthropic.AsyncAnthropic(api_key=key, base_url=mock.url, max_retries=0) as sdk:
        return (await sdk.messages.create(**body)).usage


async def test_prompt_cache_is_per_group_and_below_minimum_not_cached() -> None:
    body = _cached_turn()
    async with MockUpstream([KEY, KEY2]) as alone:  # each key its own organization
        first = await _usage(alone, KEY, body)
        other = await _usage(alone, KEY2, body)
        again = await _usage(alone, KEY, body)
    assert first.cache_creation_input_tokens > 1024 and first.cache_read_input_tokens == 0
    assert other.cache_creation_input_tokens == first.cache_creation_input_tokens
    assert again.cache_read_input_tokens == first.cache_creation_input_tokens
    async with MockUpstream([KEY, KEY2], groups={KEY: "org", KEY2: "org"}) as shared:
        await _usage(shared, KEY, body)
        via_other = await _usage(shared, KEY2, body)
        assert via_other.cache_read_input_tokens == first.cache_creation_input_tokens
        # Under the model's minimum (1024 for Sonnet 4.6): processed without caching.
        small = await _usage(shared, KEY, _cached_turn(system_words=20))
    assert small.cache_creation_input_tokens == small.cache_read_input_tokens == 0
    assert small.cache_creation is not None
    assert small.cache_creation.ephemeral_5m_input_tokens == 0


async def test_prompt_cache_ttl_refreshed_on_hit() -> None:
    now = [1000.0]
    body = _cached_turn()
    long_body = {**body, "system": [{**body["system"][0], "text": "Long lived. " * 3000}]}
    long_body["system"][0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    async with MockUpstream([KEY], clock=lambda: now[0]) as mock:
        written = (await _usage(mock, KEY, body)).cache_creation_input_tokens
        hour = await _usage(mock, KEY, long_body)
        assert hour.cache_creation is not None
        assert hour.cache_creation.ephemeral_1h_input_tokens > 0
        now[0] += 299  # within 5 minutes: a hit, which refreshes the entry
        assert (await _usage(mock, KEY, body)).cache_read_input_tokens == written
        now[0] += 299  # 598 s after the write, 299 s after the hit: still there
        assert (await _usage(mock, KEY, body)).cache_read_input_tokens == written
        now[0] += 301  # past 5 minutes since the last use: written again
        expired = await _usage(mock, KEY, body)
        assert expired.cache_read_input_tokens == 0
        assert expired.cache_creation_input_tokens == written
        # The 1-hour entry outlived it.
        assert (await _usage(mock, KEY, long_body)).cache_read_input_tokens > 0


async def test_prompt_cache_lookback_reads_the_previous_turn() -> None:
    """A growing conversation marked on its last block reads the previous turn's
    prefix (found within 20 blocks before the breakpoint) and writes the new turns."""
    history: list[dict[str, Any]] = []
    system = [{"type": "text", "text": "Code carefully. " * 1000}]
    async with MockUpstream([KEY]) as mock:
        reads = []
        for turn in range(4):
            history.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": f"step {turn} " * 30,
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                }
            )
            body = {"model": MODEL, "max_tokens": 20, "system": system, "messages": history}
            usage = await _usage(mock, KEY, body)
            total = (
                usage.input_tokens
                + usage.cache_read_input_tokens
                + usage.cache_creation_input_tokens
            )
            reads.append((usage.cache_read_input_tokens, usage.cache_creation_input_tokens, total))
            history[-1]["content"][0].pop("cache_control")
            history.append({"role": "assistant", "content": [{"type": "text", "text": "ok"}]})
    # input_tokens after the last breakpoint: only the request's base tokens
    base = reads[0][2] - reads[0][1]
    assert all(total - read - written == base for read, written, total in reads)
    assert reads[0][0] == 0
    for (read, _, _), (before_read, before_written, _) in zip(reads[1:], reads, strict=False):
        assert read == before_read + before_written  # the whole previous prefix


async def test_more_than_four_breakpoints_is_the_apis_400(client: anthropic.AsyncAnthropic) -> None:
    blocks: Any = [
        {"type": "text", "text": f"part {n}", "cache_control": {"type": "ephemeral"}}
        for n in range(4)
    ]
    ok = await client.messages.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": blocks}]
    )
    assert ok.usage.input_tokens > 0
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(
            model=MODEL,
            max_tokens=10,
            system=[{"type": "text", "text": "one more", "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": blocks}],
        )
    assert info.value.body["error"]["message"] == (  # type: ignore[index]
        "A maximum of 4 blocks with cache_control may be provided. Found 5."
    )
