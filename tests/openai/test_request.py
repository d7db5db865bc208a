"""OpenAI chat.completions request -> Anthropic Messages request (pure tests)."""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx2
import pytest

from alicode_gw.errors import InvalidRequestError
from alicode_gw.openai.request import DEFAULT_MAX_TOKENS, stream_include_usage, to_anthropic
from alicode_gw.openai.response import to_openai
from alicode_gw.requestbody import MAX_JSON_DEPTH
from tests.support import openai_fixtures as h
from tests.support.openai_fixtures import CID, CREATED, MODEL

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _request(payload: dict[str, Any]) -> dict[str, Any]:
    return to_anthropic({"model": MODEL, **payload})


# ---------------------------------------------------------------- request: basics


def test_minimal_request():
    body = _request({"messages": [h.user("hello")]})
    assert body == {
        "model": MODEL,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "hello"}],
    }
    assert DEFAULT_MAX_TOKENS == 4096


def test_system_and_developer_become_system():
    body = _request(
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                h.user("hi"),
                {"role": "assistant", "content": "salut"},
                {"role": "system", "content": "Stay polite."},
                h.user("bye"),
            ]
        }
    )
    assert body["system"] == [
        {"type": "text", "text": "Be terse."},
        {"type": "text", "text": "Use French."},
        {"type": "text", "text": "Stay polite."},
    ]
    assert body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "salut"},
        {"role": "user", "content": "bye"},
    ]
    single = _request({"messages": [{"role": "developer", "content": "Only one."}, h.user("x")]})
    assert single["system"] == "Only one."


def test_content_parts_text_and_images():
    body = _request(
        {
            "messages": [
                h.user(
                    [
                        {"type": "text", "text": "Compare these"},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"},
                        },
                        {"type": "image_url", "image_url": {"url": "https://ex.com/cat.jpg"}},
                        {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG}"}},
                    ]
                )
            ]
        }
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare these"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://ex.com/cat.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}},
    ]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://ex.com/cat.png",
        "file:///etc/passwd",
        f"data:image/bmp;base64,{PNG}",
        f"data:text/plain;base64,{PNG}",
        "data:image/png,rawbytes",
        "data:image/png;base64,",
        "",
    ],
)
def test_bad_image_url(url):
    part = {"type": "image_url", "image_url": {"url": url}}
    with pytest.raises(InvalidRequestError) as exc:
        _request({"messages": [h.user("x"), h.user([{"type": "text", "text": "see"}, part])]})
    assert exc.value.param == "messages[1].content[1].image_url.url"
    assert exc.value.status == 400


def test_tools_translated():
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    body = _request(
        {
            "messages": [h.user("weather?")],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Weather",
                        "parameters": params,
                        "strict": True,
                    },
                },
                {"type": "function", "function": {"name": "now"}},
            ],
        }
    )
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather", "input_schema": params, "strict": True},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, None, None),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice(choice, parallel, expected):
    payload: dict[str, Any] = {"messages": [h.user("x")], "tools": [TOOL]}
    if choice is not None:
        payload["tool_choice"] = choice
    if parallel is not None:
        payload["parallel_tool_calls"] = parallel
    assert _request(payload).get("tool_choice") == expected


def test_tool_choice_needs_tools():
    with pytest.raises(InvalidRequestError) as exc:
        _request({"messages": [h.user("x")], "tool_choice": "required"})
    assert exc.value.param == "tool_choice"
    assert "tool_choice" not in _request({"messages": [h.user("x")], "tool_choice": "none"})


def test_assistant_tool_calls_and_tool_results():
    body = _request(
        {
            "tools": [TOOL],
            "messages": [
                h.user("weather in Paris and Rome, and the time?"),
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"city":"Rome"}'},
                        },
                        {
                            "id": "call_3",
                            "type": "function",
                            "function": {"name": "t", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {
                    "role": "tool",
                    "tool_call_id": "call_2",
                    "content": [{"type": "text", "text": "25C"}],
                },
                {"role": "tool", "tool_call_id": "call_3", "content": ""},
                h.user("Thanks, and tomorrow?"),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_4",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_4", "content": "20C"},
            ],
        }
    )
    assert body["messages"] == [
        {"role": "user", "content": "weather in Paris and Rome, and the time?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "f", "input": {"city": "Rome"}},
                {"type": "tool_use", "id": "call_3", "name": "t", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "25C"}],
                },
                {"type": "tool_result", "tool_use_id": "call_3"},
                {"type": "text", "text": "Thanks, and tomorrow?"},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_4", "name": "f", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_4", "content": "20C"}],
        },
    ]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "x"}, "messages[1].tool_call_id"),
        ({"role": "tool", "tool_call_id": "", "content": "x"}, "messages[1].tool_call_id"),
        (
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}
                ],
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
                ],
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {
                "role": "assistant",
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            "messages[1].tool_calls[0].id",
        ),
        ({"role": "narrator", "content": "x"}, "messages[1].role"),
        ({"role": "function", "name": "f", "content": "x"}, "messages[1].role"),
        ({"role": "user"}, "messages[1].content"),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
            "messages[1].content[0].type",
        ),
        (
            {"role": "user", "content": [{"type": "file", "file": {}}]},
            "messages[1].content[0].type",
        ),
        (
            {"role": "user", "content": [{"type": "refusal", "refusal": "no"}]},
            "messages[1].content[0]",
        ),
        (
            {
                "role": "system",
                "content": [{"type": "image_url", "image_url": {"url": "https://x"}}],
            },
            "messages[1].content[0].type",
        ),
        ({"role": "assistant", "content": "x", "audio": {"id": "a"}}, "messages[1].audio"),
        ("not a message", "messages[1]"),
    ],
)
def test_bad_messages(message, param):
    with pytest.raises(InvalidRequestError) as exc:
        _request({"messages": [h.user("x"), message]})
    assert exc.value.param == param


@pytest.mark.parametrize(
    "arguments",
    [
        '{"a": ' + "[" * 1000 + "]" * 1000 + "}",  # past the interpreter's recursion limit
        '{"a": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}",
        '{"a": ' + "9" * (sys.get_int_max_str_digits() + 1) + "}",
    ],
)
def test_tool_call_arguments_that_cannot_be_read(arguments):
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(InvalidRequestError) as exc:
        _request({"messages": [h.user("x"), {"role": "assistant", "tool_calls": [call]}]})
    assert exc.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tool_call_arguments_at_the_depth_limit_are_read():
    arguments = '{"a": ' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1) + "}"
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    body = _request({"messages": [h.user("x"), {"role": "assistant", "tool_calls": [call]}]})
    assert body["messages"][1]["content"][0]["input"] == json.loads(arguments)
    json.dumps(body)  # and the translated body encodes


def test_messages_required():
    for messages in (None, [], [{"role": "system", "content": "only system"}]):
        with pytest.raises(InvalidRequestError) as exc:
            _request({"messages": messages})
        assert exc.value.param == "messages"
    with pytest.raises(InvalidRequestError) as exc:
        to_anthropic({"messages": [h.user("x")]})
    assert exc.value.param == "model"


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("END", ["END"]),
        (["a", "b"], ["a", "b"]),
        (["1", "2", "3", "4"], ["1", "2", "3", "4"]),
        ([], None),
        (None, None),
    ],
)
def test_stop(stop, expected):
    assert _request({"messages": [h.user("x")], "stop": stop}).get("stop_sequences") == expected


@pytest.mark.parametrize("stop", [["1", "2", "3", "4", "5"], [1], {"a": 1}, 7])
def test_bad_stop(stop):
    with pytest.raises(InvalidRequestError) as exc:
        _request({"messages": [h.user("x")], "stop": stop})
    assert exc.value.param == "stop"


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"max_completion_tokens": 300}, 300),
        ({"max_tokens": 200}, 200),
        ({"max_tokens": 150, "max_completion_tokens": 150}, 150),
        ({"max_tokens": None, "max_completion_tokens": None}, DEFAULT_MAX_TOKENS),
    ],
)
def test_max_tokens(limits, expected):
    assert _request({"messages": [h.user("x")], **limits})["max_tokens"] == expected


@pytest.mark.parametrize(
    ("limits", "param"),
    [
        ({"max_tokens": 100, "max_completion_tokens": 200}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": "100"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
    ],
)
def test_bad_max_tokens(limits, param):
    with pytest.raises(InvalidRequestError) as exc:
        _request({"messages": [h.user("x")], **limits})
    assert exc.value.param == param


def test_sampling_user_and_extensions():
    body = _request(
        {
            "messages": [h.user("x")],
            "temperature": 0.3,
            "top_p": 0.9,
            "top_k": 40,
            "user": "customer-42",
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "max_completion_tokens": 8000,
        }
    )
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["top_k"] == 40
    assert body["metadata"] == {"user_id": "customer-42"}
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    both = _request({"messages": [h.user("x")], "user": "old", "safety_identifier": "new"})
    assert both["metadata"] == {"user_id": "new"}


def test_temperature_above_one_is_rejected_not_rescaled():
    with pytest.raises(InvalidRequestError) as exc:
        _request({"messages": [h.user("x")], "temperature": 1.5})
    assert exc.value.param == "temperature"
    assert _request({"messages": [h.user("x")], "temperature": 1})["temperature"] == 1


def test_stream_and_stream_options():
    payload = {
        "messages": [h.user("x")],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert _request(payload)["stream"] is True
    assert stream_include_usage(payload) is True
    assert stream_include_usage({"stream": True}) is False
    assert "stream" not in _request({"messages": [h.user("x")], "stream": False})
    with pytest.raises(InvalidRequestError) as exc:
        _request({"messages": [h.user("x")], "stream_options": {"include_usage": True}})
    assert exc.value.param == "stream_options"


def test_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    body = _request(
        {
            "messages": [h.user("x")],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": schema},
            },
        }
    )
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    plain = _request({"messages": [h.user("x")], "response_format": {"type": "text"}})
    assert "output_config" not in plain


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": -1}, "presence_penalty"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"verbosity": "low"}, "verbosity"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"frobnicate": True}, "frobnicate"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tools": [TOOL], "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [TOOL], "parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"stream": True, "stream_options": {"chunky": True}}, "stream_options.chunky"),
    ],
)
def test_rejected_parameters(extra, param):
    with pytest.raises(InvalidRequestError) as exc:
        _request({"messages": [h.user("x")], **extra})
    assert exc.value.param == param
    assert exc.value.status == 400
    assert param.split(".")[0].split("[")[0] in exc.value.message


def test_neutral_and_ignored_parameters_are_accepted():
    neutral = {
        "n": 1,
        "logprobs": False,
        "top_logprobs": 0,
        "logit_bias": {},
        "frequency_penalty": 0,
        "presence_penalty": 0.0,
        "modalities": ["text"],
        "reasoning_effort": "none",
        "verbosity": "medium",
        "service_tier": "auto",
        "seed": 7,
        "store": False,
        "metadata": {"app": "demo"},
        "prompt_cache_key": "k",
        "prediction": {"type": "content", "content": "x"},
        "audio": None,
        "web_search_options": None,
        "functions": None,
    }
    body = _request({"messages": [h.user("x")], **neutral})
    assert body == _request({"messages": [h.user("x")]})


def test_requests_as_the_openai_sdk_serialises_them():
    """The SDK's own request bytes (tools, images, tool round trip) translate cleanly."""
    seen: list[dict[str, Any]] = []
    reply = to_openai(h.message("text"), completion_id=CID, created=CREATED, model=MODEL)

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(200, json=reply)

    with h.openai_client(handler) as client:
        client.chat.completions.create(
            model=MODEL,
            max_completion_tokens=100,
            messages=[
                {"role": "system", "content": "sys"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "look", "arguments": '{"zoom": 2}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_9", "content": "a pixel"},
            ],
            tools=[
                {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}
            ],
            tool_choice="auto",
            stop=["\n\n"],
            user="u1",
            temperature=0.2,
        )
    body = to_anthropic(seen[0])
    assert body["system"] == "sys"
    assert body["messages"][0]["content"][1]["source"]["media_type"] == "image/png"
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_9", "name": "look", "input": {"zoom": 2}}
    ]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_9", "content": "a pixel"}
    ]
    assert body["tool_choice"] == {"type": "auto"}
    assert body["stop_sequences"] == ["\n\n"]
    assert body["max_tokens"] == 100
