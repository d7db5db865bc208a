"""Anthropic Message / stream -> OpenAI chat.completion / chunks, read by the openai SDK.

Pure tests (no server); tests/openai_translation.py explains the fixtures and how
the official SDKs are given the bytes.
"""

from __future__ import annotations

import json

import openai
import pytest

from alicode_gw.errors import GatewayTimeoutError, OverloadedError
from alicode_gw.openai.response import StreamTranslator, to_openai
from alicode_gw.upstream.sse import SSEParser
from tests.support import openai_fixtures as h
from tests.support.openai_fixtures import CID, CREATED, FIXTURES, MODEL, STREAMS

# ---------------------------------------------------------------- response


def test_text_response():
    message = h.message("text")
    out = to_openai(message, completion_id=CID, created=CREATED, model="alias-model")
    text = message["content"][0]["text"]
    assert out["id"] == CID
    assert out["object"] == "chat.completion"
    assert out["created"] == CREATED
    assert out["model"] == "alias-model"
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    usage = message["usage"]
    assert out["usage"]["prompt_tokens"] == usage["input_tokens"]
    assert out["usage"]["completion_tokens"] == usage["output_tokens"]
    parsed = h.sdk_completion(out)
    assert parsed.choices[0].message.content == text
    assert parsed.usage.total_tokens == usage["input_tokens"] + usage["output_tokens"]


def test_tool_response_leaves_thinking_out():
    message = h.message("tool_thinking")
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use"]
    out = to_openai(message, completion_id=CID, created=CREATED, model=MODEL)
    reply = out["choices"][0]["message"]
    assert reply["content"] == message["content"][1]["text"]
    assert "think" not in reply["content"]
    tool = message["content"][2]
    assert reply["tool_calls"] == [
        {
            "id": tool["id"],
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps(tool["input"])},
        }
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    parsed = h.sdk_completion(out)
    assert json.loads(parsed.choices[0].message.tool_calls[0].function.arguments) == tool["input"]


def test_empty_tool_input_is_empty_object_string():
    out = to_openai(h.message("tool_empty_args"), completion_id=CID, created=CREATED, model=MODEL)
    reply = out["choices"][0]["message"]
    assert reply["content"] is None
    assert reply["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}


def test_parallel_tool_response_and_cached_usage():
    out = to_openai(h.message("parallel_tools"), completion_id=CID, created=CREATED, model=MODEL)
    calls = out["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in calls] == [
        "toolu_01Ab3hWq9ZPZ2x8Kc7Vd1Tf4",
        "toolu_01Xy7pLm4Rk8Vn2Bq6Wd9Zs3",
    ]
    assert json.loads(calls[0]["function"]["arguments"])["note"] == "naïve café ☕"
    assert calls[1]["function"]["arguments"] == "{}"
    assert out["usage"] == {
        "prompt_tokens": 21 + 340 + 1800,
        "completion_tokens": 87,
        "total_tokens": 21 + 340 + 1800 + 87,
        "prompt_tokens_details": {"cached_tokens": 1800},
    }
    parsed = h.sdk_completion(out)
    assert parsed.usage.prompt_tokens_details.cached_tokens == 1800


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        (None, "stop"),
    ],
)
def test_finish_reasons(stop_reason, finish):
    message = {**h.message("text"), "stop_reason": stop_reason}
    out = to_openai(message, completion_id=CID, created=CREATED, model=MODEL)
    assert out["choices"][0]["finish_reason"] == finish


def test_max_tokens_fixture_is_length():
    out = to_openai(h.message("max_tokens"), completion_id=CID, created=CREATED, model=MODEL)
    assert out["choices"][0]["finish_reason"] == "length"


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("name", STREAMS)
def test_stream_reassembles_to_the_non_stream_answer(name, include_usage):
    """openai SDK reassembly of our chunks == to_openai of the anthropic SDK's
    accumulation of the same upstream stream (ids included)."""
    raw, tr = h.translate(name, include_usage=include_usage)
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks, final = h.sdk_stream(raw, **kwargs)
    upstream = h.anthropic_message(h.sse(name))
    expected = to_openai(upstream, completion_id=CID, created=CREATED, model=MODEL)
    assert h.answer(final) == h.answer(h.sdk_completion(expected))
    assert final.id == CID
    assert final.model == MODEL
    if include_usage:
        assert chunks[-1].choices == []
        assert chunks[-1].usage.model_dump(exclude_none=True) == expected["usage"]
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.usage is None for c in chunks)
        assert b'"usage"' not in raw
    assert tr.usage.output_tokens == upstream["usage"]["output_tokens"]
    assert tr.stop_reason == upstream["stop_reason"]


@pytest.mark.parametrize("name", [n for n in STREAMS if (FIXTURES / f"{n}.json").exists()])
def test_stream_matches_recorded_non_stream_response(name):
    """Against the separately recorded non-streamed response (ids differ there)."""
    _, final = h.sdk_stream(h.translate(name)[0])
    expected = h.answer(
        h.sdk_completion(
            to_openai(h.message(name), completion_id=CID, created=CREATED, model=MODEL)
        )
    )
    got = h.answer(final)
    strip = lambda calls: [c[1:] for c in calls]  # noqa: E731
    assert got["content"] == expected["content"]
    assert strip(got["tool_calls"]) == strip(expected["tool_calls"])
    assert got["finish_reason"] == expected["finish_reason"]


@pytest.mark.parametrize("name", STREAMS)
def test_chunks_go_out_as_events_arrive(name):
    """Every text or argument delta produces its chunk at once, from that event."""
    tr = StreamTranslator(completion_id=CID, created=CREATED, model=MODEL, include_usage=False)
    for ev in h.events(h.sse(name)):
        out = tr.feed(ev)
        data = json.loads(ev.data)
        delta = data.get("delta", {}) if ev.event == "content_block_delta" else {}
        if delta.get("type") == "text_delta":
            (chunk,) = h.chunks(out + b"data: [DONE]\n\n")
            assert chunk["choices"][0]["delta"] == {"content": delta["text"]}
        elif delta.get("type") == "input_json_delta" and delta["partial_json"]:
            (chunk,) = h.chunks(out + b"data: [DONE]\n\n")
            (call,) = chunk["choices"][0]["delta"]["tool_calls"]
            assert call["function"] == {"arguments": delta["partial_json"]}
        elif ev.event in ("ping", "message_stop") or delta.get("type") in (
            "thinking_delta",
            "signature_delta",
        ):
            assert out == b""


def test_first_chunk_role_and_tool_call_indexes():
    raw, _ = h.translate("parallel_tools")
    chunks = h.chunks(raw)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert sum("role" in d for d in deltas) == 1
    calls = [call for d in deltas for call in d.get("tool_calls", ())]
    firsts = [c for c in calls if "id" in c]
    assert firsts == [
        {
            "index": 0,
            "id": "toolu_01Ab3hWq9ZPZ2x8Kc7Vd1Tf4",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {
            "index": 1,
            "id": "toolu_01Xy7pLm4Rk8Vn2Bq6Wd9Zs3",
            "type": "function",
            "function": {"name": "get_time", "arguments": ""},
        },
    ]  # Anthropic's block indexes were 1 and 2
    for index, expected in (
        (0, {"location": "Paris, France", "unit": "celsius", "note": "naïve café ☕"}),
        (1, {}),
    ):
        pieces = [c["function"]["arguments"] for c in calls if c["index"] == index]
        assert json.loads("".join(pieces)) == expected
        assert all(
            set(c) == {"index", "function"} for c in calls if c["index"] == index and "id" not in c
        )
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + [
        "tool_calls"
    ]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == CID for c in chunks)


def test_tool_call_split_across_many_input_json_deltas():
    raw_events = h.events(h.sse("tool_long_args"))
    pieces = [
        json.loads(ev.data)["delta"]["partial_json"]
        for ev in raw_events
        if ev.event == "content_block_delta"
    ]
    assert len([p for p in pieces if p]) > 50
    chunks = h.chunks(h.translate("tool_long_args")[0])
    args = [
        call["function"]["arguments"]
        for c in chunks
        for call in c["choices"][0]["delta"].get("tool_calls", ())
        if "id" not in call
    ]
    assert args == [p for p in pieces if p]
    _, final = h.sdk_stream(h.translate("tool_long_args")[0])
    (call,) = final.choices[0].message.tool_calls
    tool = h.message("tool_long_args")["content"][-1]
    assert json.loads(call.function.arguments) == tool["input"]
    assert call.function.name == "record_profile"


def test_stream_tool_without_arguments_gets_empty_object():
    _, final = h.sdk_stream(h.translate("tool_empty_args")[0])
    (call,) = final.choices[0].message.tool_calls
    assert call.function.arguments == "{}"
    # An upstream that sends no argument text at all (only the empty first piece)
    # still gives "{}", as the non-streamed translation does.
    events = [
        ev for ev in h.events(h.sse("tool_empty_args")) if '"partial_json":"{}"' not in ev.data
    ]
    tr = StreamTranslator(completion_id=CID, created=CREATED, model=MODEL, include_usage=False)
    raw = b"".join(tr.feed(ev) for ev in events) + tr.finish()
    _, final = h.sdk_stream(raw)
    (call,) = final.choices[0].message.tool_calls
    assert call.function.arguments == "{}"


def test_thinking_never_reaches_the_client():
    raw, _ = h.translate("tool_thinking")
    thinking, text, _tool = h.message("tool_thinking")["content"]
    assert thinking["type"] == "thinking"
    assert b"Let me think" not in raw
    assert thinking["signature"].encode() not in raw
    deltas = [c["choices"][0]["delta"] for c in h.chunks(raw)]
    assert "".join(d.get("content") or "" for d in deltas) == text["text"]
    assert {k for d in deltas for k in d} == {"role", "content", "tool_calls"}


def test_byte_by_byte_upstream_gives_identical_output():
    for name in ("parallel_tools", "docs_tool_use"):
        whole, _ = h.translate(name, include_usage=True)
        parser = SSEParser()
        tr = StreamTranslator(completion_id=CID, created=CREATED, model=MODEL, include_usage=True)
        out = b""
        for i in range(len(raw := h.sse(name))):
            for ev in parser.feed(raw[i : i + 1]):
                out += tr.feed(ev)
        assert out + tr.finish() == whole


def test_usage_chunk_and_done():
    raw, tr = h.translate("parallel_tools", include_usage=True)
    chunks = h.chunks(raw)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 2161,
        "completion_tokens": 87,
        "total_tokens": 2248,
        "prompt_tokens_details": {"cached_tokens": 1800},
    }
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert tr.usage.cache_read_input_tokens == 1800
    assert tr.usage.cache_creation_input_tokens == 340
    assert tr.finish() == b""  # only once


def test_upstream_error_event_raises_in_the_openai_sdk():
    raw, tr = h.translate("stream_error", include_usage=True)
    assert not raw.endswith(b"[DONE]\n\n")
    last = h.events(raw)[-1]
    assert json.loads(last.data) == {
        "error": {
            "message": "Overloaded",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert isinstance(tr.error, OverloadedError)
    received = []
    with pytest.raises(openai.APIError, match="Overloaded"):
        for chunk in h.sdk_stream(raw)[0]:
            received.append(chunk)
    assert tr.finish() == b""


def test_gateway_error_chunk_mid_stream():
    tr = StreamTranslator(completion_id=CID, created=CREATED, model=MODEL, include_usage=False)
    events = h.events(h.sse("text"))
    out = b"".join(tr.feed(ev) for ev in events[:5])
    out += tr.error_chunk(GatewayTimeoutError("The upstream went silent."))
    assert tr.feed(events[5]) == b""
    assert tr.finish() == b""
    text: list[str] = []
    with h.openai_client(h.sse_response(out)) as client:
        stream = client.chat.completions.create(model=MODEL, messages=[h.user("x")], stream=True)
        with pytest.raises(openai.APIError, match="went silent") as exc:
            for chunk in stream:
                text.append(chunk.choices[0].delta.content or "")
    assert exc.value.body == {
        "message": "The upstream went silent.",
        "type": "timeout",
        "param": None,
        "code": None,
    }
    assert "".join(text).strip()  # the text before the error did reach the client


def test_stream_cut_before_message_delta_still_closes():
    events = [
        ev for ev in h.events(h.sse("text")) if ev.event not in ("message_delta", "message_stop")
    ]
    tr = StreamTranslator(completion_id=CID, created=CREATED, model=MODEL, include_usage=True)
    out = b"".join(tr.feed(ev) for ev in events) + tr.finish()
    chunks = h.chunks(out)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert tr.stop_reason is None
    assert tr.usage.output_tokens == 1  # only message_start's count was seen
