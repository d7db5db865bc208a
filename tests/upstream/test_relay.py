"""Pure parts of the relay: the usage of a non-streamed Message (read from the end of
the body when it can be, else by decoding the whole body)."""

from __future__ import annotations

import json
from pathlib import Path

from alicode_gw.money.contract import Usage
from alicode_gw.upstream.relay import _last_usage, json_result, usage_from_message

USAGE = {
    "input_tokens": 12,
    "output_tokens": 34,
    "cache_creation_input_tokens": 5,
    "cache_read_input_tokens": 7,
    "cache_creation": {"ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 3},
}
EXPECTED = Usage(12, 34, cache_creation_5m=2, cache_creation_1h=3, cache_read=7)


def message(**members: object) -> dict[str, object]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        **members,
    }


def test_usage_of_a_message_as_the_api_sends_it() -> None:
    for indent in (None, 2):
        body = json.dumps(message(usage=USAGE), indent=indent).encode()
        result = json_result(body)
        assert result.usage == EXPECTED and result.generated and result.complete


def test_a_usage_key_inside_the_content_is_never_taken_for_the_message_usage() -> None:
    tool = {"type": "tool_use", "id": "t", "name": "f", "input": {"usage": {"output_tokens": 9}}}
    text = {"type": "text", "text": 'say "usage": {"output_tokens": 1} }'}
    # usage first and the content last: the last "usage": is the tool input's
    body = json.dumps({"usage": USAGE, **message(content=[text, tool])}).encode()
    assert json_result(body).usage == EXPECTED
    # the usual order, with the same content
    body = json.dumps(message(content=[tool, text], usage=USAGE)).encode()
    assert json_result(body).usage == EXPECTED


def test_a_key_that_ends_in_usage_is_not_the_usage() -> None:
    ends_in_usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    body = json.dumps({**message(usage=USAGE), 'x"usage': ends_in_usage}).encode()
    assert b'x\\"usage":' in body
    assert json_result(body).usage == EXPECTED
    body = json.dumps({**message(), 'x"usage': ends_in_usage}).encode()
    assert json_result(body).usage == Usage() and not json_result(body).generated


def test_only_json_whitespace_counts_around_the_usage() -> None:
    body = json.dumps(message(usage=USAGE)).encode()
    assert json_result(body[:-1] + b" \r\n\t}").usage == EXPECTED
    for odd in (b"\x0b", b"\x0c", "\u00a0".encode()):
        assert _last_usage(body[:-1] + odd + b"}") is None  # and the full decode refuses it
        assert not json_result(body[:-1] + odd + b"}").generated


def test_a_body_that_is_not_a_message_produced_nothing() -> None:
    for body in (b"", b"not json", b"[1, 2]", b'{"usage": 3}', b'{"usage": {} '):
        result = json_result(body)
        assert result.usage == Usage() and not result.generated, body


def test_fixture_messages_give_the_usage_a_full_decode_gives() -> None:
    fixtures = sorted(
        (Path(__file__).resolve().parents[1] / "fixtures" / "anthropic").glob("*.json")
    )
    assert fixtures
    for path in fixtures:
        body = path.read_bytes()
        expected = usage_from_message(json.loads(body))
        assert json_result(body).usage == expected, path.name
        assert _last_usage(body) is not None, path.name  # read from the end
