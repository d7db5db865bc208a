"""POST /v1/chat/completions through the gateway, driven by the official openai SDK."""

from __future__ import annotations

import json

import asyncpg
import openai
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from tests.support.customers import (
    MODEL,
    Customer,
    ledger_rows,
    make_customer,
    upstream_exchanges,
)
from tests.support.frames import locals_holding

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
    "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def oai(gateway: app.Gateway, customer: Customer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=customer.key, base_url=gateway.url + "/v1", max_retries=0)


async def test_plain_completion_is_billed(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    async with oai(gw, customer) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hello"},
            ],
            max_tokens=50,
        )
        completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    sent = json.loads(upstream_exchanges(mock_upstream)[-1].body)
    assert sent["system"] == "Be brief." and sent["max_tokens"] == 50
    upstream_answer = json.loads(bytes(upstream_exchanges(mock_upstream)[-1].response_bytes))
    assert completion.choices[0].message.content == upstream_answer["content"][0]["text"]
    assert completion.usage.completion_tokens == upstream_answer["usage"]["output_tokens"]
    rows = await ledger_rows(db, raw.headers["request-id"])
    assert len(rows) == 1 and rows[0]["output_tokens"] == completion.usage.completion_tokens


async def test_tool_call_round_trip_and_stream_equals_plain(
    gw: app.Gateway, customer: Customer
) -> None:
    messages: list[dict] = [{"role": "user", "content": "Weather in Paris?"}]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    async with oai(gw, customer) as client:
        plain = await client.chat.completions.create(
            model=MODEL, messages=messages, tools=TOOLS, tool_choice=choice, max_tokens=200
        )
        call = plain.choices[0].message.tool_calls[0]
        assert plain.choices[0].finish_reason == "tool_calls"
        assert call.type == "function" and call.function.name == "get_weather"
        assert "city" in json.loads(call.function.arguments)

        stream = await client.chat.completions.create(
            model=MODEL,
            messages=messages,
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=200,
            stream=True,
        )
        arguments, names, finish = "", "", None
        async for chunk in stream:
            for delta_call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                assert delta_call.index == 0
                names += delta_call.function.name or ""
                arguments += delta_call.function.arguments or ""
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert names == "get_weather" and finish == "tool_calls"
        assert json.loads(arguments) == json.loads(call.function.arguments)

        messages += [
            plain.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny"},
        ]
        answer = await client.chat.completions.create(
            model=MODEL, messages=messages, tools=TOOLS, max_tokens=200
        )
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content


async def test_image_url_reaches_upstream_as_image_block(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    async with oai(gw, customer) as client:
        await client.chat.completions.create(
            model=MODEL,
            max_tokens=20,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": PIXEL}},
                    ],
                }
            ],
        )
    content = json.loads(upstream_exchanges(mock_upstream)[-1].body)["messages"][0]["content"]
    image = next(block for block in content if block["type"] == "image")
    assert image["source"]["type"] == "base64"
    assert image["source"]["media_type"] == "image/png"


async def test_stream_text_and_usage_chunk(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    async with oai(gw, customer) as client:
        plain = await client.chat.completions.create(
            model=MODEL, max_tokens=60, messages=[{"role": "user", "content": "same prompt"}]
        )
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            max_tokens=60,
            messages=[{"role": "user", "content": "same prompt"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        stream = raw.parse()
        text, usage, first_role = "", None, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.choices:
                first_role = first_role or chunk.choices[0].delta.role
                text += chunk.choices[0].delta.content or ""
    assert first_role == "assistant"
    assert text == plain.choices[0].message.content
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    rows = await ledger_rows(db, raw.headers["request-id"])
    assert len(rows) == 1 and rows[0]["output_tokens"] == usage.completion_tokens


async def test_errors_are_openai_typed(gw: app.Gateway, db: asyncpg.Connection) -> None:
    good = await make_customer(db)
    limited = await make_customer(db, models=["claude-haiku-4-5"])
    throttled = await make_customer(db, rpm=1)
    ask = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}

    bad_key = Customer(good.email, 0, 0, "", "sk-ali-aaaaaaaaaaaa-" + "b" * 32)
    async with oai(gw, bad_key) as client:
        with pytest.raises(openai.AuthenticationError) as auth_error:
            await client.chat.completions.create(**ask)
    assert auth_error.value.request_id.startswith("req_")
    assert set(auth_error.value.body) >= {"message", "type", "param", "code"}

    async with oai(gw, good) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(**ask, n=2)
        assert bad.value.body["param"] == "n"
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(**ask, logprobs=True)
        with pytest.raises(openai.BadRequestError) as upstream_400:
            await client.chat.completions.create(
                model=MODEL,
                max_tokens=5,
                messages=[{"role": "user", "content": "[[mock: status=400]]"}],
            )
        assert upstream_400.value.body["type"] == "invalid_request_error"

    async with oai(gw, limited) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(**ask)

    async with oai(gw, throttled) as client:
        await client.chat.completions.create(**ask)
        with pytest.raises(openai.RateLimitError) as limited_error:
            await client.chat.completions.create(**ask)
    assert "retry-after" in limited_error.value.response.headers


async def test_bearer_auth_on_anthropic_route_too(gw: app.Gateway, customer: Customer) -> None:
    import aiohttp

    headers = {"authorization": f"Bearer {customer.key}", "anthropic-version": "2023-06-01"}
    payload = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/v1/messages", json=payload, headers=headers) as resp:
            assert resp.status == 200


async def test_a_stream_does_not_hold_its_prompt(gw: app.Gateway, customer: Customer) -> None:
    """As on /v1/messages: once upstream, neither the OpenAI request, its translation
    nor the body is held by the request's frames while the answer streams."""
    marker = "prompt-marker-" + "q" * 2000
    prompt = f"{marker} [[mock: chunk_delay_ms=50 words=20]]"
    async with oai(gw, customer) as client:
        stream = await client.chat.completions.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": prompt}], stream=True
        )
        held = None
        async for chunk in stream:
            if held is None and chunk.choices and chunk.choices[0].delta.content:
                held = locals_holding(marker, through="relay_stream")
    assert held == []
