"""Client request bodies: every body the gateway cannot read exactly as the upstream
would is a 400 in the route's own error shape, with a request id, never a 500.

The unit tests drive :mod:`alicode_gw.requestbody` directly; the wire tests send raw
bytes to the three POST routes of a running gateway (the SDKs would not send them).
"""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from collections.abc import Mapping

import aiohttp
import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.errors import InvalidRequestError
from alicode_gw.requestbody import MAX_JSON_DEPTH, json_too_deep, parse_json_object
from tests.support.customers import MODEL, Customer, own_gateway
from tests.support.gateway import stop_gateway

MESSAGE = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
ROUTES = {
    "/v1/messages": MESSAGE,
    "/v1/messages/count_tokens": MESSAGE,
    "/v1/chat/completions": CHAT,
}
HUGE_INT = b"9" * (sys.get_int_max_str_digits() + 1)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- unit: parse_json_object ------------------------------------------------------


def refused(body: bytes) -> str:
    with pytest.raises(InvalidRequestError) as info:
        parse_json_object(body)
    return info.value.message


def test_a_plain_object_parses() -> None:
    body = json.dumps({**MESSAGE, "metadata": {"user_id": "u"}}).encode()
    assert parse_json_object(body) == json.loads(body)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"a": 1} x', "not valid JSON"),
        (b'{"a": 1}{"b": 2}', "not valid JSON"),
        (b'{"a": ' + HUGE_INT + b"}", "digits"),
        (b'{"a": [1, {"b": -' + HUGE_INT + b"}]}", "digits"),
    ],
)
def test_unreadable_json_is_refused(body: bytes, fragment: str) -> None:
    assert fragment in refused(body)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_utf16_and_utf32_are_refused(codec: str) -> None:
    body = json.dumps(MESSAGE).encode(codec)
    assert json.loads(body) == MESSAGE  # what json.loads alone would accept
    refused(body)


def test_invalid_utf8_and_a_bom_are_refused() -> None:
    assert "UTF-8" in refused(b'{"a": "caf\xe9"}')
    assert "UTF-8" in refused(b'{"a": "\xed\xa0\x80"}')  # an encoded surrogate
    assert "byte order mark" in refused(b"\xef\xbb\xbf" + json.dumps(MESSAGE).encode())


def test_escaped_non_ascii_and_raw_utf8_parse() -> None:
    assert parse_json_object('{"a": "caf\u00e9 \\u65e5"}'.encode()) == {"a": "caf\u00e9 \u65e5"}


@pytest.mark.parametrize("key", ["model", "stream", "max_tokens", "messages", "x"])
def test_a_duplicate_top_level_key_is_refused(key: str) -> None:
    body = b'{"model": "a", "stream": false, "max_tokens": 1, "messages": [], "x": 1, '
    body += f'"{key}": 2}}'.encode()
    assert repr(key) in refused(body)


def test_a_duplicate_key_by_escape_is_refused() -> None:
    refused(b'{"model": "a", "mod\\u0065l": "b"}')


def test_duplicate_keys_below_the_top_level_are_the_upstream_s_business() -> None:
    assert parse_json_object(b'{"metadata": {"a": 1, "a": 2}}') == {"metadata": {"a": 2}}


def test_nesting_is_bounded() -> None:
    ok = '{"a": ' + nested(MAX_JSON_DEPTH - 1) + "}"
    assert parse_json_object(ok.encode())["a"]
    too_deep = '{"a": ' + nested(MAX_JSON_DEPTH) + "}"
    assert "nested" in refused(too_deep.encode())
    # Far past the interpreter's recursion limit, and in an object chain.
    assert "nested" in refused(b'{"a": ' + b"[" * 100_000 + b"}")
    chain = '{"a": ' * 5000 + "1" + "}" * 5000
    assert "nested" in refused(chain.encode())


@pytest.mark.parametrize(
    ("text", "deeper_than_3"),
    [
        ("[[[]]]", False),
        ("[[[[]]]]", True),
        ('["[[[[[", "]]]]"]', False),  # brackets in strings do not count
        ('["\\"[[[[[", "\\\\", [[]]]', False),  # nor after escaped quotes
        ('["\\\\", [[[]]]]', True),  # an escaped backslash ends no string
        ("[[]][[]][[]][[]][[]]", False),
        ("[" + "[]" * 50 + "]", False),
        ("]]]]][[[[", True),  # malformed: judged on the opening run
        ("{[{[", True),
    ],
)
def test_json_too_deep(text: str, deeper_than_3: bool) -> None:
    assert json_too_deep(text.encode(), 3) is deeper_than_3


# --- wire: the three POST routes ----------------------------------------------------


def headers_for(route: str, key: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    if key is not None:
        headers["x-api-key" if route != "/v1/chat/completions" else "authorization"] = (
            key if route != "/v1/chat/completions" else f"Bearer {key}"
        )
    return headers


async def post_raw(
    gateway: app.Gateway, route: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict, Mapping[str, str]]:
    # A connection per request: a body the server could not read may end it.
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + route, data=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers.copy()


def assert_route_error(route: str, status: int, body: dict, headers: Mapping[str, str]) -> str:
    """The error in ``route``'s own shape, with a request id; its type."""
    request_id = headers["request-id"]
    assert request_id.startswith("req_")
    if route == "/v1/chat/completions":
        assert set(body) == {"error"}, body
        assert body["error"]["message"] and headers["x-request-id"] == request_id
        return body["error"]["type"]
    assert body["type"] == "error" and body["request_id"] == request_id, body
    assert body["error"]["message"]
    return body["error"]["type"]


BAD_BODIES = {
    "huge int": lambda ok: ok.replace(b'"max_tokens": 5', b'"max_tokens": ' + HUGE_INT),
    "huge int deep": lambda ok: ok.replace(b'"hi"', b'"hi", "x": [[-' + HUGE_INT + b"]]"),
    "duplicate model": lambda ok: ok.replace(b"{", b'{"model": "claude-haiku-4-5", ', 1),
    "duplicate stream": lambda ok: ok[:-1] + b', "stream": true, "stream": false}',
    "utf-16": lambda ok: ok.decode().encode("utf-16"),
    "utf-32-le": lambda ok: ok.decode().encode("utf-32-le"),
    "latin-1": lambda ok: ok.replace(b'"hi"', b'"h\xe9"'),
    "bom": lambda ok: b"\xef\xbb\xbf" + ok,
    "deep": lambda ok: ok.replace(b'"hi"', ("[" * 5000 + "]" * 5000).encode()),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", BAD_BODIES)
async def test_unreadable_bodies_are_400_on_every_route(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream, route: str, case: str
) -> None:
    body = BAD_BODIES[case](json.dumps(ROUTES[route]).encode())
    before = len(mock_upstream.exchanges)
    for key in (customer.key, None):
        status, answer, headers = await post_raw(gw, route, body, headers_for(route, key))
        error_type = assert_route_error(route, status, answer, headers)
        if key is not None:
            assert status == 400 and error_type == "invalid_request_error", answer
        else:  # refused for the body or for the missing key, whichever comes first
            assert status in (400, 401), answer
    assert len(mock_upstream.exchanges) == before


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("encoding", "mangle"),
    [
        ("gzip", lambda b: b"not gzip at all"),
        ("gzip", lambda b: gzip.compress(b)[:-12]),
        ("deflate", lambda b: b"\x00\x01 not deflate"),
        ("deflate", lambda b: zlib.compress(b)[:-4] + b"\xff\xff\xff\xff"),
        ("deflate", lambda b: zlib.compress(b)[:-6]),  # truncated
        ("gzip", lambda b: gzip.compress(b) + b"trailing bytes"),
    ],
)
async def test_a_body_that_does_not_decompress_is_400(
    gw: app.Gateway, customer: Customer, route: str, encoding: str, mangle
) -> None:
    body = mangle(json.dumps(ROUTES[route]).encode())
    for key in (customer.key, None):
        headers = {**headers_for(route, key), "content-encoding": encoding}
        status, answer, headers = await post_raw(gw, route, body, headers)
        error_type = assert_route_error(route, status, answer, headers)
        if key is not None:
            assert status == 400 and error_type == "invalid_request_error", answer
        else:
            assert status in (400, 401), answer


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("GZip", lambda b: gzip.compress(b[:9]) + gzip.compress(b[9:])),  # two members
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b, wbits=-zlib.MAX_WBITS)),  # raw, no header
        ("identity", lambda b: b),
    ],
)
async def test_a_compressed_body_is_read(
    gw: app.Gateway, customer: Customer, route: str, encoding: str, compress
) -> None:
    body = compress(json.dumps(ROUTES[route]).encode())
    headers = {**headers_for(route, customer.key), "content-encoding": encoding}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + route, data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, deflate", "x-bogus"])
async def test_an_unsupported_content_encoding_is_415(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream, route: str, encoding: str
) -> None:
    before = len(mock_upstream.exchanges)
    body = json.dumps(ROUTES[route]).encode()
    headers = {**headers_for(route, customer.key), "content-encoding": encoding}
    status, answer, headers = await post_raw(gw, route, body, headers)
    assert status == 415, answer
    assert assert_route_error(route, status, answer, headers) == "invalid_request_error"
    assert len(mock_upstream.exchanges) == before


async def test_a_body_that_inflates_past_the_limit_is_413(
    db: asyncpg.Connection, make_config, customer: Customer
) -> None:
    gateway = await own_gateway(db, make_config, "bomb", max_body_bytes=64 * 1024)
    try:
        padded = {**MESSAGE, "metadata": {"user_id": "x" * (10 * 1024 * 1024)}}
        body = gzip.compress(json.dumps(padded).encode())
        assert len(body) < 64 * 1024
        route = "/v1/messages"
        headers = {**headers_for(route, customer.key), "content-encoding": "gzip"}
        status, answer, headers = await post_raw(gateway, route, body, headers)
        assert status == 413, answer
        assert assert_route_error(route, status, answer, headers) == "request_too_large"
    finally:
        await stop_gateway(gateway)


async def test_deep_tool_call_arguments_are_400_in_openai_shape(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    route = "/v1/chat/completions"
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    payload = {
        "model": MODEL,
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        ],
    }
    before = len(mock_upstream.exchanges)
    for depth in (MAX_JSON_DEPTH, 1000, 100_000):
        call["function"]["arguments"] = '{"a": ' + nested(depth) + "}"
        body = json.dumps(payload).encode()
        status, answer, headers = await post_raw(gw, route, body, headers_for(route, customer.key))
        assert status == 400, answer
        assert assert_route_error(route, status, answer, headers) == "invalid_request_error"
        assert answer["error"]["param"] == "messages[1].tool_calls[0].function.arguments"
    assert len(mock_upstream.exchanges) == before
