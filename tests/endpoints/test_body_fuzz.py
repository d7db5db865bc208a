"""A standing fuzz campaign over the three POST routes of a real gateway on loopback.

Hypothesis draws a request — a route, a key (valid, wrong or none, in either header),
``content-type``, ``content-encoding`` and ``anthropic-version`` headers, and a body:
arbitrary JSON, requests that are nearly valid with arbitrary values in them, broken
JSON, deep nesting, huge integers, other text encodings, duplicate keys, raw bytes —
and sends it to the gateway over HTTP. Every answer must hold:

- status below 500, within the client's timeout (no hang);
- a ``request-id`` header, and an error body in the route's own shape (Anthropic's
  ``{"type": "error", "error": {...}, "request_id": ...}``, OpenAI's ``{"error": {...}}``
  with ``x-request-id`` on ``/v1/chat/completions``);
- nothing logged at ERROR, and no log record holding the marker every generated body
  carries, or the customer's key.

How it runs: ``@given`` on an ``async def`` test. pytest-asyncio runs each Hypothesis
example on the test's event loop, where the gateway, the mock upstream and the database
fixtures were set up, so the fixtures are built once and shared by all examples (hence
the suppressed ``function_scoped_fixture`` health check — sharing is the intent; the
examples need no isolation from each other). ``derandomize=True`` makes the examples
the same on every run, so a failure in CI reproduces locally; ``database=None`` keeps
Hypothesis from writing an example database into the checkout. The number of
examples is bounded (``MAX_EXAMPLES``) to keep the test to seconds.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import secrets
import sys
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from alicode_gw import app
from alicode_gw.requestbody import MAX_JSON_DEPTH
from tests.support.customers import MODEL, Customer

MAX_EXAMPLES = 200
TIMEOUT = aiohttp.ClientTimeout(total=20)
MARKER = "fuzzmark" + secrets.token_hex(6)  # in every body; never in the log
ROUTES = ("/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions")
DIGITS = sys.get_int_max_str_digits()

# --- bodies -------------------------------------------------------------------------

marked_text = st.one_of(
    st.just(MARKER),
    st.text(max_size=30).map(lambda t: f"{t}{MARKER}{t[::-1]}"),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    marked_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=10), marked_text), inner, max_size=4),
    ),
    max_leaves=20,
)
deep_depths = st.sampled_from([MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH, 999, 5000, 20_000])


@st.composite
def deep_values(draw: st.DrawFn) -> Any:
    """JSON text nested ``n`` deep (as a raw fragment, not a value: built directly)."""
    depth = draw(deep_depths)
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")]))
    return RawJSON(opener * depth + json.dumps(MARKER) + closer * depth)


@dataclass(frozen=True)
class RawJSON:
    """A JSON fragment placed verbatim into the encoded body."""

    text: str


@st.composite
def huge_numbers(draw: st.DrawFn) -> RawJSON:
    digits = "9" * draw(st.integers(DIGITS - 2, DIGITS + 1500))
    return RawJSON(
        draw(
            st.sampled_from(
                [digits, "-" + digits, digits + ".5", "1e99999", "-1e-99999", "0." + digits]
            )
        )
    )


odd_values = st.one_of(json_values, deep_values(), huge_numbers())


def encode(value: Any) -> str:
    """``json.dumps`` that places :class:`RawJSON` fragments verbatim."""
    fragments: dict[str, str] = {}

    def default(obj: Any) -> Any:
        if isinstance(obj, RawJSON):
            slot = f"\x00raw{len(fragments)}\x00"
            fragments[slot] = obj.text
            return slot
        raise TypeError(type(obj).__name__)

    text = json.dumps(value, default=default)
    for slot, fragment in fragments.items():
        text = text.replace(json.dumps(slot), fragment)
    return text


def mostly(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``strategy`` three times in four, else an odd value (deep, huge, arbitrary)."""
    return st.sampled_from([True, True, True, False]).flatmap(
        lambda plain: strategy if plain else odd_values
    )


text_blocks = st.builds(lambda t: {"type": "text", "text": t}, marked_text)
tool_blocks = st.one_of(
    st.builds(
        lambda i: {"type": "tool_use", "id": "toolu_1", "name": "f", "input": i},
        mostly(st.dictionaries(st.text(max_size=5), marked_text, max_size=2)),
    ),
    st.builds(
        lambda c: {"type": "tool_result", "tool_use_id": "toolu_1", "content": c},
        mostly(marked_text),
    ),
)


@st.composite
def anthropic_requests(draw: st.DrawFn, count: bool) -> dict[str, Any]:
    content = draw(
        mostly(
            st.one_of(
                marked_text,
                st.lists(st.one_of(text_blocks, tool_blocks), min_size=1, max_size=3),
            )
        )
    )
    request: dict[str, Any] = {
        "model": draw(st.sampled_from([MODEL, MODEL, "claude-haiku-4-5", "no-such-model"])),
        "messages": [{"role": "user", "content": content}],
    }
    if not count:
        request["max_tokens"] = draw(mostly(st.integers(1, 50)))
        if draw(st.booleans()):
            request["stream"] = draw(mostly(st.booleans()))
    if draw(st.booleans()):
        request["system"] = draw(mostly(marked_text))
    if draw(st.booleans()):
        schema = {"type": "object", "properties": draw(mostly(st.just({})))}
        request["tools"] = [{"name": "f", "description": MARKER, "input_schema": schema}]
    if draw(st.sampled_from([False, False, False, True])):
        request = {**draw(st.dictionaries(st.text(max_size=8), odd_values, max_size=2)), **request}
    return request


@st.composite
def openai_requests(draw: st.DrawFn) -> dict[str, Any]:
    arguments = draw(
        mostly(
            st.one_of(
                st.dictionaries(st.text(max_size=5), marked_text, max_size=2).map(json.dumps),
                st.builds(encode, odd_values),
                st.text(max_size=30).map(lambda t: t + MARKER),
            )
        )
    )
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages: list[Any] = [{"role": "user", "content": draw(mostly(marked_text))}]
    if draw(st.booleans()):
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": draw(mostly(marked_text))},
        ]
    if draw(st.sampled_from([False, False, False, True])):
        messages.append(draw(odd_values))
    request: dict[str, Any] = {
        "model": draw(st.sampled_from([MODEL, MODEL, MODEL, "gpt-4o"])),
        "messages": messages,
    }
    fields = {
        "max_tokens": st.integers(1, 50),
        "stream": st.booleans(),
        "stream_options": st.builds(lambda b: {"include_usage": b}, st.booleans()),
        "tools": st.just(
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        ),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
    }
    for name, values in fields.items():
        if draw(st.booleans()):
            request[name] = draw(mostly(values))
    return request


def request_texts(route: str) -> st.SearchStrategy[str]:
    if route == "/v1/chat/completions":
        return st.builds(encode, openai_requests())
    return st.builds(encode, anthropic_requests(route.endswith("count_tokens")))


@st.composite
def bodies(draw: st.DrawFn, route: str) -> bytes:
    text = draw(mostly(request_texts(route)))
    if not isinstance(text, str):
        text = encode(text)
    kind = draw(
        st.sampled_from(
            ["utf-8"] * 8 + ["broken", "broken", "encoded", "duplicate", "bytes", "empty"]
        )
    )
    if kind == "broken":
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(["", "\x00", '"', "\\", "}", "{", ",", "\ud800", "é"]))
        text = text[:at] + junk + text[at + draw(st.integers(0, 3)) :]
        return text.encode("utf-8", "surrogatepass") + MARKER.encode()
    if kind == "encoded":
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1"]))
        return text.encode(codec, "replace")
    if kind == "duplicate" and text.startswith("{") and len(text) > 2:
        key = draw(st.sampled_from(["model", "stream", "max_tokens", "messages", MARKER]))
        return ("{" + json.dumps(key) + ": " + encode(draw(json_values)) + ", " + text[1:]).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=300)) + MARKER.encode()
    if kind == "empty":
        return b""
    return text.encode()


@dataclass(frozen=True)
class Attempt:
    route: str
    body: bytes
    key: str  # "valid", "wrong" or "none"
    key_header: str
    content_type: str | None
    content_encoding: str | None
    compress: bool
    anthropic_version: str | None

    def __repr__(self) -> str:  # bodies run to megabytes: show their size and ends
        body = self.body
        shown = repr(body) if len(body) <= 400 else f"{body[:200]!r}…{body[-100:]!r}"
        fields = {k: v for k, v in vars(self).items() if k != "body"}
        return f"Attempt(body[{len(body)}]={shown}, {fields})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # Hypothesis's printer
        printer.text(repr(self))


@st.composite
def attempts(draw: st.DrawFn) -> Attempt:
    route = draw(st.sampled_from(ROUTES))
    return Attempt(
        route=route,
        body=draw(bodies(route)),
        key=draw(st.sampled_from(["valid"] * 6 + ["wrong", "none"])),
        key_header=draw(st.sampled_from(["x-api-key", "authorization"])),
        content_type=draw(
            st.sampled_from(
                [
                    "application/json",
                    "application/json",
                    "application/json",
                    "application/json; charset=utf-8",
                    "application/json; charset=utf-16",
                    "text/plain",
                    "multipart/form-data; boundary=x",
                    None,
                    f"application/{MARKER}",
                ]
            )
        ),
        content_encoding=draw(
            st.sampled_from(
                [None] * 8 + ["gzip", "gzip", "deflate", "identity", "br", "zstd", "x-bogus"]
            )
        ),
        compress=draw(st.sampled_from([True, True, True, False])),
        anthropic_version=draw(
            st.sampled_from(["2023-06-01"] * 4 + [None, "", "1999-01-01", MARKER])
        ),
    )


# --- the campaign -------------------------------------------------------------------


def headers_of(attempt: Attempt, key: str) -> tuple[dict[str, str], bytes]:
    headers: dict[str, str] = {}
    body = attempt.body
    if attempt.key != "none":
        secret = key if attempt.key == "valid" else "sk-ali-" + secrets.token_hex(16)
        if attempt.key_header == "authorization":
            headers["authorization"] = f"Bearer {secret}"
        else:
            headers["x-api-key"] = secret
    if attempt.content_type is not None:
        headers["content-type"] = attempt.content_type
    if attempt.anthropic_version is not None:
        headers["anthropic-version"] = attempt.anthropic_version
    if attempt.content_encoding is not None:
        headers["content-encoding"] = attempt.content_encoding
        if attempt.compress and attempt.content_encoding == "gzip":
            body = gzip.compress(body)
        elif attempt.compress and attempt.content_encoding == "deflate":
            body = zlib.compress(body)
    return headers, body


def check_answer(route: str, status: int, headers: Any, raw: bytes) -> None:
    assert status < 500, (status, raw[:500])
    request_id = headers.get("request-id", "")
    assert request_id.startswith("req_"), dict(headers)
    if status < 400:
        return
    body = json.loads(raw)
    if route == "/v1/chat/completions":
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert isinstance(body["error"]["type"], str)
        assert headers.get("x-request-id") == request_id
    else:
        assert body["type"] == "error", body
        assert isinstance(body["error"]["type"], str)
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        # The gateway's own errors carry its request id; an upstream 4xx is relayed as
        # received, with the upstream's.
        assert isinstance(body["request_id"], str) and body["request_id"].startswith("req_")


def check_log(records: list[logging.LogRecord], key: str) -> None:
    for record in records:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        assert record.levelno < logging.ERROR, text[:2000]
        assert MARKER not in text, text[:2000]
        assert key not in text and key.rsplit("-", 1)[-1] not in text, record.name


@pytest.mark.slow
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(attempt=attempts())
async def test_fuzzed_requests_never_500_nor_leak(
    gw: app.Gateway, customer: Customer, caplog: pytest.LogCaptureFixture, attempt: Attempt
) -> None:
    caplog.set_level(logging.DEBUG)
    seen = len(caplog.records)
    headers, body = headers_of(attempt, customer.key)
    # A connection per request: the server may end one after a body it could not read.
    async with aiohttp.ClientSession(timeout=TIMEOUT, auto_decompress=False) as http:
        async with http.post(
            gw.url + attempt.route, data=io.BytesIO(body), headers=headers
        ) as resp:
            raw = await resp.read()
            check_answer(attempt.route, resp.status, resp.headers, raw)
            event(f"status {resp.status}")  # shown by --hypothesis-show-statistics
    assert not await gw.state.tasks.settle(5.0)
    check_log(caplog.records[seen:], customer.key)
