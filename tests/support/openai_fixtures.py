"""Shared helpers of the OpenAI translation tests: recorded fixtures and the SDKs.

The Anthropic side comes from tests/fixtures/anthropic/ (recorded from the mock
upstream over HTTP, see tests/fixtures/record_anthropic_streams.py, plus one
transcribed from Anthropic's docs). The client side is the official ``openai`` SDK
(and the ``anthropic`` SDK, to accumulate an upstream stream independently of our
code): each is given the bytes through an ``httpx2.MockTransport``, so it parses
exactly what the gateway would put on the wire. No gateway code is replaced.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx2
import openai
from openai.lib.streaming.chat import ChatCompletionStreamState

from alicode_gw.openai.response import StreamTranslator
from alicode_gw.upstream.sse import SSEEvent, SSEParser

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "anthropic"
MODEL = "claude-sonnet-4-6"
CID = "chatcmpl-test0123456789"
CREATED = 1_760_000_000
STREAMS = [
    "text",
    "tool_thinking",
    "tool_long_args",
    "tool_empty_args",
    "max_tokens",
    "parallel_tools",
    "docs_tool_use",
]


def sse(name: str) -> bytes:
    return (FIXTURES / f"{name}.sse").read_bytes()


def message(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_bytes())


def events(raw: bytes) -> list[SSEEvent]:
    return SSEParser().feed(raw)


def translate(name: str, *, include_usage: bool = False) -> tuple[bytes, StreamTranslator]:
    tr = StreamTranslator(
        completion_id=CID, created=CREATED, model=MODEL, include_usage=include_usage
    )
    out = b"".join(tr.feed(ev) for ev in events(sse(name))) + tr.finish()
    return out, tr


def chunks(raw: bytes) -> list[dict[str, Any]]:
    """The JSON objects of an OpenAI stream (asserting its framing)."""
    assert raw.endswith(b"data: [DONE]\n\n")
    out = []
    for ev in events(raw):
        assert ev.event is None
        if ev.data != "[DONE]":
            out.append(json.loads(ev.data))
    return out


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


@contextmanager
def openai_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> Iterator[openai.OpenAI]:
    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    with openai.OpenAI(
        api_key="sk-ali-test", base_url="http://gw.test/v1", http_client=http, max_retries=0
    ) as client:
        yield client


def sse_response(raw: bytes) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    return handler


def json_response(obj: dict[str, Any]) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=obj)

    return handler


def sdk_stream(raw: bytes, **kwargs: Any) -> tuple[list[Any], Any]:
    """(chunks, final completion) as the openai SDK reads and accumulates `raw`."""
    state = ChatCompletionStreamState()
    chunks = []
    with openai_client(sse_response(raw)) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=[user("hi")], stream=True, **kwargs
        )
        for chunk in stream:
            chunks.append(chunk)
            state.handle_chunk(chunk)
    # the accumulated ChatCompletion (get_final_completion() would also run the
    # structured-output parser, which refuses finish_reason "length")
    return chunks, state.current_completion_snapshot


def sdk_completion(obj: dict[str, Any]) -> Any:
    with openai_client(json_response(obj)) as client:
        return client.chat.completions.create(model=MODEL, messages=[user("hi")])


def anthropic_message(raw: bytes) -> dict[str, Any]:
    """The Message the anthropic SDK accumulates from an upstream stream."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    with anthropic.Anthropic(
        api_key="sk-ant-test", base_url="http://up.test", http_client=http, max_retries=0
    ) as client:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=[user("hi")]) as s:
            return s.get_final_message().model_dump(mode="json")


def answer(completion: Any) -> dict[str, Any]:
    """What a client takes from a completion: text, tool calls (arguments decoded)
    and finish reason. A streamed message with no text has content "" where the
    non-streamed one has null (as with OpenAI itself): both mean "no text"."""
    choice = completion.choices[0]
    return {
        "content": choice.message.content or "",
        "tool_calls": [
            (c.id, c.type, c.function.name, json.loads(c.function.arguments))
            for c in choice.message.tool_calls or ()
        ],
        "finish_reason": choice.finish_reason,
    }
