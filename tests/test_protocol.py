"""Protocol abuse over raw sockets (alicode_gw/protocol.py): malformed requests, other
HTTP versions, smuggling attempts and slow clients against a gateway with one-second
read timeouts.

The invariants of every case: no status >= 500; every answer is JSON in Anthropic's
shape with a ``request-id``; no byte of the request (a marker placed in the key and the
body) in any answer or any log line; no log record above DEBUG; and the gateway serves
a normal request afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging

import anthropic
import pytest
from aiohttp import web

from alicode_gw import app
from alicode_gw.config import Config
from alicode_gw.protocol import GatewayServer
from tests.support.customers import MODEL, Customer
from tests.support.rawhttp import Exchange, RawResponse, exchange, trickle

MARKER = "Zq7MARKERx3"
FAKE_KEY = f"sk-ali-{MARKER}-{MARKER}secret"
BODY = json.dumps(
    {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": MARKER}]}
).encode()


def post(key: str = FAKE_KEY, *, extra: str = "", body: bytes = BODY, eol: str = "\r\n") -> bytes:
    lines = [
        "POST /v1/messages HTTP/1.1",
        "Host: gw",
        "Content-Type: application/json",
        "anthropic-version: 2023-06-01",
        f"x-api-key: {key}",
        f"Content-Length: {len(body)}",
    ]
    head = eol.join(lines) + eol + extra
    return head.encode("latin-1") + eol.encode() + body


def chunked_head(key: str) -> bytes:
    return (
        "POST /v1/messages HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"anthropic-version: 2023-06-01\r\nx-api-key: {key}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()


# Requests aiohttp's parser refuses, and request lines that are not HTTP/1.x.
MALFORMED: dict[str, bytes] = {
    "bare_lf_line_endings": post(eol="\n"),
    "control_char_ending_the_key": post(FAKE_KEY + "\x01"),
    "obs_fold_header": post(extra=f" folded-{MARKER}\r\n"),
    "nul_in_a_header_value": post(extra=f"x-note: a\x00{MARKER}\r\n"),
    "del_in_a_header_value": post(extra=f"x-note: a\x7f{MARKER}\r\n"),
    "space_before_colon": post(extra=f"x-note : {MARKER}\r\n"),
    "oversized_header": post(extra=f"x-note: {MARKER * 1000}\r\n"),
    "oversized_request_line": f"GET /v1/{MARKER * 1000} HTTP/1.1\r\nHost: gw\r\n\r\n".encode(),
    "too_many_headers": post(extra="".join(f"x-h{i}: {MARKER}\r\n" for i in range(200))),
    "content_length_and_chunked": post(extra="Transfer-Encoding: chunked\r\n"),
    "two_content_lengths": post(extra="Content-Length: 3\r\n"),
    "bad_chunk_size": chunked_head(FAKE_KEY) + f"zz{MARKER}\r\n{MARKER}\r\n0\r\n\r\n".encode(),
    "tls_client_hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + MARKER.encode() * 4,
    "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
    "http09_request_line": b"GET /v1/health\r\n\r\n",
    "http09_post": f"POST /v1/messages\r\n\r\n{BODY.decode()}".encode(),
    "http2_version_in_request_line": b"GET /v1/health HTTP/2.0\r\nHost: gw\r\n\r\n",
    "http_version_1_9": b"GET /v1/health HTTP/1.9\r\nHost: gw\r\n\r\n",
}


def assert_anthropic_error(response: RawResponse, status: int) -> None:
    assert response.status == status
    assert response.headers["content-type"].startswith("application/json")
    request_id = response.headers["request-id"]
    assert request_id.startswith("req_")
    body = json.loads(response.body)
    assert body["type"] == "error" and body["request_id"] == request_id
    assert body["error"]["type"] == "invalid_request_error"


def assert_clean(result: Exchange) -> None:
    """No 5xx, every answer an error in Anthropic's shape, no request bytes echoed."""
    assert MARKER.encode() not in result.raw
    for response in result.responses:
        assert response.status < 500, response
        assert response.headers.get("request-id", "").startswith("req_"), response


def assert_quiet_log(caplog: pytest.LogCaptureFixture) -> None:
    """No request byte in any log line, and nothing logged above DEBUG but the access
    lines of requests that reached a route."""
    assert MARKER not in caplog.text
    loud = [
        r
        for r in caplog.records
        if r.levelno > logging.DEBUG and r.name not in ("asyncio", "alicode_gw.access")
    ]
    assert not loud, [(r.name, r.levelname, r.getMessage()[:200]) for r in loud]


async def assert_still_serves(gw: app.Gateway, customer: Customer) -> None:
    client = anthropic.AsyncAnthropic(api_key=customer.key, base_url=gw.url, max_retries=0)
    async with client:
        message = await client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.content


async def test_malformed_requests_get_a_json_400_without_request_bytes(
    strict_gw: app.Gateway, customer: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each case on its own connection: exactly one 400 in Anthropic's shape with a
    fresh request id, then the connection is closed; no request byte is echoed or
    logged (aiohttp's own answer quoted the raw request and logged it with a traceback),
    and an HTTP/0.9 or HTTP/2.0 request line is refused before routing."""
    caplog.set_level(logging.DEBUG)
    names = list(MALFORMED)
    results = await asyncio.gather(
        *(exchange(strict_gw.port, MALFORMED[name], wait=5.0) for name in names)
    )
    failures = {}
    for name, result in zip(names, results, strict=True):
        try:
            assert_clean(result)
            assert result.closed
            (response,) = result.responses
            assert_anthropic_error(response, 400)
            assert "Malformed HTTP request" in json.loads(response.body)["error"]["message"]
        except (AssertionError, ValueError, KeyError) as exc:
            failures[name] = f"{exc!r}: {result.raw[:300]!r}"
    assert not failures, failures
    assert_quiet_log(caplog)
    protocol_lines = [r for r in caplog.records if r.name == "alicode_gw.protocol"]
    assert len(protocol_lines) <= len(MALFORMED)
    assert all(len(r.getMessage()) < 200 and not r.exc_info for r in protocol_lines)
    await assert_still_serves(strict_gw, customer)


async def test_a_parse_error_inside_a_body_being_read_is_a_400_of_the_route(
    strict_gw: app.Gateway, customer: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    """The head is parsed and the handler is reading the body when a malformed chunk
    arrives: that read fails, and the route answers 400 (no hang, no 500, no bytes)."""
    caplog.set_level(logging.DEBUG)
    head = chunked_head(customer.key).replace(b"/v1/messages", b"/v1/chat/completions")
    result = await trickle(
        strict_gw.port, [head, f"zz{MARKER}\r\n{MARKER}\r\n0\r\n\r\n".encode()], 0.3, wait=3.0
    )
    assert_clean(result)
    assert result.seconds < 1.5 and result.closed
    (response,) = result.responses
    assert response.status == 400
    assert response.headers["x-request-id"] == response.headers["request-id"]
    assert json.loads(response.body)["error"]["type"] == "invalid_request_error"
    # The same after an answer that did not read the body (aiohttp drains it): the
    # connection is closed, and the drain's failure is no ERROR traceback.
    head = chunked_head(customer.key).replace(b"/v1/messages", b"/v1/nope")
    result = await trickle(strict_gw.port, [head, b"zz\r\n0\r\n\r\n"], 0.3, wait=3.0)
    assert result.seconds < 1.5 and result.closed
    assert [r.status for r in result.responses] == [404]
    assert_quiet_log(caplog)
    await assert_still_serves(strict_gw, customer)


async def test_idle_connections_are_closed_after_the_keepalive_timeout(
    strict_gw: app.Gateway, customer: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection that never sends, and one idle after an answer, are closed after
    ``keepalive_timeout`` (2 s here; aiohttp's default is an hour)."""
    caplog.set_level(logging.DEBUG)
    never = exchange(strict_gw.port, b"", wait=5.0)
    after_answer = exchange(
        strict_gw.port, b"GET /v1/health HTTP/1.1\r\nHost: gw\r\n\r\n", wait=5.0
    )
    silent, answered = await asyncio.gather(never, after_answer)
    assert silent.closed and 1.5 < silent.seconds < 4.0, silent
    assert answered.closed and 1.5 < answered.seconds < 4.0, answered
    assert len(answered.responses) == 1
    assert_quiet_log(caplog)
    await assert_still_serves(strict_gw, customer)


async def test_a_slow_request_head_is_closed_after_the_header_timeout(
    strict_gw: app.Gateway, customer: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    """Slowloris: a head sent a few bytes at a time, never finished, is cut
    ``header_timeout`` (1 s) after its first byte, though bytes keep coming."""
    caplog.set_level(logging.DEBUG)
    head = post(customer.key).partition(b"\r\n\r\n")[0]
    parts = [head[i : i + 2] for i in range(0, len(head), 2)]  # ~10 s to send it all
    result = await trickle(strict_gw.port, parts, 0.1, wait=4.5)
    assert result.closed and 0.8 < result.seconds < 3.0, result
    assert_clean(result)
    assert_quiet_log(caplog)
    await assert_still_serves(strict_gw, customer)


async def test_incomplete_bodies_are_closed_after_the_body_idle_timeout(
    strict_gw: app.Gateway, customer: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    """A head with no body, a body short of its Content-Length, a chunked body without
    its terminating chunk: each closed ``body_idle_timeout`` (1 s) after the client's
    last byte, with at most a 400 and nothing billed (the gateway's audit is clean)."""
    caplog.set_level(logging.DEBUG)
    full = post(customer.key)
    cases = {
        "head_without_body": full[: -len(BODY)],
        "short_content_length": full[:-10],
        "unterminated_chunked": chunked_head(customer.key)
        + f"{len(BODY):x}\r\n".encode()
        + BODY
        + b"\r\n",
    }
    results = await asyncio.gather(*(exchange(strict_gw.port, d, wait=4.0) for d in cases.values()))
    for name, result in zip(cases, results, strict=True):
        assert result.closed and 0.8 < result.seconds < 3.0, (name, result)
        assert_clean(result)
        for response in result.responses:
            assert response.status == 400, (name, response)
    assert_quiet_log(caplog)
    await assert_still_serves(strict_gw, customer)


async def test_a_slow_but_steady_body_is_served(
    strict_gw: app.Gateway, customer: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    """The body timeout is an idle timeout: a body sent in pieces 0.4 s apart, for
    longer than the timeout in total, is served."""
    caplog.set_level(logging.DEBUG)
    full = post(customer.key)
    pieces = [full[: -len(BODY)]] + [BODY[i : i + 20] for i in range(0, len(BODY), 20)]
    result = await trickle(strict_gw.port, pieces, 0.4, wait=6.0)
    assert result.seconds > 1.5
    (response, *_) = result.responses
    assert response.status == 200, response
    assert json.loads(response.body)["type"] == "message"
    assert_quiet_log(caplog)


async def test_pipelined_requests_are_answered_in_order(
    strict_gw: app.Gateway, customer: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data = (
        post(customer.key)
        + b"GET /v1/nope HTTP/1.1\r\nHost: gw\r\n\r\n"
        + b"GET /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n\r\n"
    )
    result = await exchange(strict_gw.port, data, wait=5.0, responses=3)
    statuses = [r.status for r in result.responses]
    assert statuses == [200, 404, 405], result.raw[:500]
    assert len({r.headers["request-id"] for r in result.responses}) == 3
    assert_quiet_log(caplog)


async def test_smuggled_requests_are_not_served(
    strict_gw: app.Gateway, customer: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    """CL.TE and TE.CL: a request hidden behind a conflicting length is never run
    (one 400, then the connection closes)."""
    caplog.set_level(logging.DEBUG)
    smuggled = f"GET /v1/models HTTP/1.1\r\nHost: gw\r\nx-api-key: {customer.key}\r\n\r\n"
    cl_te = (
        "POST /v1/messages HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
    ).encode()
    te_cl = (
        "POST /v1/messages HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Length: 4\r\n\r\n{len(smuggled):x}\r\n{smuggled}\r\n0\r\n\r\n"
    ).encode()
    obfuscated_te = (
        "POST /v1/messages HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + smuggled
    ).encode()
    results = await asyncio.gather(
        *(exchange(strict_gw.port, data, wait=4.0) for data in (cl_te, te_cl, obfuscated_te))
    )
    for result in results:
        assert_clean(result)
        assert result.closed
        assert [r.status for r in result.responses] == [400], result.raw[:400]
    assert_quiet_log(caplog)
    await assert_still_serves(strict_gw, customer)


async def test_time_the_gateway_is_not_reading_does_not_count_against_the_body() -> None:
    """A handler that reads the body late (here after 2.5 s): the client sent 4 MB at
    once and then waited on the full buffers, so it is not idle, and is served."""

    async def late_reader(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.sleep(2.5)
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        return web.Response(text=str(size))

    config = Config(header_timeout=1.0, body_idle_timeout=1.0, keepalive_timeout=2.0)
    runner = web.ServerRunner(GatewayServer(late_reader, config, access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        body = b"x" * (4 * 1024 * 1024)
        head = f"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: {len(body)}\r\n\r\n"
        result = await exchange(port, head.encode() + body, wait=6.0, responses=1)
    finally:
        await runner.cleanup()
    (response,) = result.responses
    assert (response.status, response.body) == (200, str(len(body)).encode())
