"""Relaying an upstream response to the client: bytes as received, nothing buffered.

Streams: every chunk is written as it arrives (``await resp.write()`` is the
backpressure) and a copy is fed to the cheap :class:`~alicode_gw.upstream.sse.UsageScanner`.
A client that goes away stops the writing, not the reading: the upstream is read on
(discarding) until its final usage arrives or the drain timeout passes, so the
request is settled on real numbers. A mid-stream upstream failure ends the client's
stream with an Anthropic ``event: error``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from alicode_gw.errors import (
    GatewayError,
    GatewayTimeoutError,
    UpstreamError,
    sse_error_event,
)
from alicode_gw.money.contract import Usage
from alicode_gw.state import RequestContext
from alicode_gw.upstream.client import body_read_timeout
from alicode_gw.upstream.headers import passed_headers
from alicode_gw.upstream.sse import UsageScanner

# Rough characters per generated token, for estimating output of a cut stream.
CHARS_PER_TOKEN = 4
_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)
_JSON = json.JSONDecoder()


@dataclass(slots=True)
class RelayResult:
    """What the relay learned, for settling the bill."""

    usage: Usage
    generated: bool  # did the upstream produce anything billable?
    estimated: bool  # was output estimated (stream cut before its final usage)?
    complete: bool  # did the upstream finish normally?
    client_gone: bool = False
    captured: bytes | None = None  # a complete stream's bytes (capture asked, within it)


def usage_from_message(message: dict[str, Any]) -> Usage:
    """Usage of a non-streamed Message object."""
    usage = message.get("usage")
    if not isinstance(usage, dict):
        return Usage()
    return _usage(usage)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(usage: dict[str, Any]) -> Usage:
    creation = _int(usage.get("cache_creation_input_tokens"))
    split = usage.get("cache_creation")
    if isinstance(split, dict):
        five = _int(split.get("ephemeral_5m_input_tokens"))
        hour = _int(split.get("ephemeral_1h_input_tokens"))
    else:
        five, hour = creation, 0
    return Usage(
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cache_creation_5m=five,
        cache_creation_1h=hour,
        cache_read=_int(usage.get("cache_read_input_tokens")),
    )


def usage_from_scanner(scanner: UsageScanner) -> tuple[Usage, bool]:
    """(usage, estimated) of a stream, complete or cut."""
    final = scanner.stop_reason is not None or scanner.saw_message_stop
    output = scanner.output_tokens
    estimated = False
    if not final:
        guess = math.ceil(scanner.output_chars / CHARS_PER_TOKEN)
        if guess > output:
            output, estimated = guess, True
    usage = Usage(
        input_tokens=scanner.input_tokens,
        output_tokens=output,
        cache_creation_5m=scanner.cache_creation_5m,
        cache_creation_1h=scanner.cache_creation_1h,
        cache_read=scanner.cache_read_input_tokens,
    )
    return usage, estimated


async def read_upstream_json(ctx: RequestContext, upstream: aiohttp.ClientResponse) -> bytes:
    """The whole upstream JSON body (a non-streamed Message)."""
    try:
        body = await upstream.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError("The upstream connection failed while answering.") from exc
    finally:
        upstream.release()
    if ctx.ttfb is None:
        ctx.ttfb = time.perf_counter() - ctx.started
    return body


_USAGE_MEMBER = b'"usage":'
_JSON_SPACE = b" \t\r\n"
_JSON_SPACE_STR = _JSON_SPACE.decode()


def _last_usage(body: bytes) -> dict[str, Any] | None:
    """The ``usage`` of a Message read from the end of its body, without decoding the
    rest (the content can be large): the API sends it as the last member. Taken only
    when nothing but JSON whitespace and the closing brace of the body follows it, so
    that it cannot be a ``usage`` key nested in the content, and not when a backslash
    precedes it (it could end a longer key, ``"x\\"usage":``); anything else is left to
    the full decode."""
    at = body.rfind(_USAGE_MEMBER)
    # (Only the body's first bytes are looked at: no copy of a large body.)
    if at <= 0 or body[at - 1] == 0x5C or not body[:64].lstrip(_JSON_SPACE).startswith(b"{"):
        return None
    try:
        text = body[at + len(_USAGE_MEMBER) :].decode().lstrip(_JSON_SPACE_STR)
        usage, end = _JSON.raw_decode(text)
    except ValueError:
        return None
    if not isinstance(usage, dict) or text[end:].strip(_JSON_SPACE_STR) != "}":
        return None
    return usage


def json_result(body: bytes) -> RelayResult:
    last = _last_usage(body)
    if last is not None:
        usage = _usage(last)
    else:
        try:
            message = json.loads(body)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            return RelayResult(Usage(), generated=False, estimated=False, complete=False)
        usage = usage_from_message(message)
    generated = usage.output_tokens > 0 or usage.input_tokens > 0
    return RelayResult(usage, generated=generated, estimated=False, complete=True)


class StreamFormat(Protocol):
    """How a relayed stream is re-encoded for the client (the OpenAI surface); without
    one, the upstream's bytes go out unchanged."""

    def translate(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def error(self, err: GatewayError, request_id: str) -> bytes: ...


async def relay_stream(
    ctx: RequestContext,
    upstream: aiohttp.ClientResponse,
    headers: dict[str, str],
    fmt: StreamFormat | None = None,
    capture: int = 0,
) -> tuple[web.StreamResponse, RelayResult]:
    """Relay an SSE body chunk by chunk; always returns what was generated. ``capture``:
    also keep a copy of the upstream's bytes up to that many (for the response cache;
    none past it)."""
    config = ctx.state.config
    loop = asyncio.get_running_loop()
    response = web.StreamResponse(
        status=upstream.status,
        headers={
            **passed_headers(upstream.headers),
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **headers,
        },
    )
    scanner = UsageScanner()
    captured = bytearray() if capture else None
    client_gone = False
    failure: GatewayError | None = None
    idle = config.upstream_idle_timeout
    drain_until = math.inf
    try:
        await response.prepare(ctx.request)
    except _CLIENT_GONE:
        client_gone = True
        drain_until = loop.time() + config.disconnect_drain_timeout
    streams = ctx.state.metrics.streams
    streams.inc()
    # The idle timer is pushed back lazily: by `idle` plus a slack of idle/2 whenever
    # less than `idle` is left, so a stream cut after between `idle` and 1.5 x `idle`
    # of silence, without rescheduling a timer for every chunk.
    deadline = min(loop.time() + idle, drain_until)
    body_read_timeout(upstream, None)  # this loop's own idle timer instead
    try:
        async with asyncio.timeout(deadline) as timer:
            while True:
                chunk = await upstream.content.readany()
                if not chunk:
                    break
                now = loop.time()
                if now + idle > deadline:
                    deadline = min(now + idle * 1.5, drain_until)
                    timer.reschedule(deadline)
                scanner.feed(chunk)
                if captured is not None:
                    if len(captured) + len(chunk) > capture:
                        captured = None
                    else:
                        captured += chunk
                if client_gone:
                    continue
                if fmt is not None:
                    chunk = fmt.translate(chunk)
                    if not chunk:
                        continue
                try:
                    await response.write(chunk)
                except _CLIENT_GONE:
                    client_gone = True
                    drain_until = loop.time() + config.disconnect_drain_timeout
                    deadline = min(loop.time() + idle, drain_until)
                    timer.reschedule(deadline)
                    continue
                if ctx.ttfb is None:
                    ctx.ttfb = time.perf_counter() - ctx.started
    except TimeoutError:
        if not client_gone:
            failure = GatewayTimeoutError("The upstream stopped sending; the stream timed out.")
    except aiohttp.ClientError:
        failure = UpstreamError("The upstream connection was lost mid-stream.")
    except asyncio.CancelledError:
        # The handler is being cancelled (shutdown deadline passed): stop here and
        # still bill what was generated; the caller settles and the handler ends.
        client_gone = True
    finally:
        streams.dec()
        if failure is not None or client_gone:
            upstream.close()
        else:
            upstream.release()
    if not client_gone:
        try:
            if failure is not None:
                if fmt is None:
                    await response.write(sse_error_event(failure, ctx.request_id))
                else:
                    await response.write(fmt.error(failure, ctx.request_id))
            elif fmt is not None:
                await response.write(fmt.finish())
            await response.write_eof()
        except _CLIENT_GONE:
            client_gone = True
    usage, estimated = usage_from_scanner(scanner)
    generated = scanner.saw_message_start and (usage.output_tokens > 0 or usage.input_tokens > 0)
    complete = failure is None and scanner.saw_message_stop and scanner.error is None
    kept = bytes(captured) if captured is not None and complete else None
    return response, RelayResult(usage, generated, estimated, complete, client_gone, kept)
