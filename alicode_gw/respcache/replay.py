"""A cache hit written to the client: a JSON answer's exact bytes, or a stream's stored
SSE bytes event by event (``await resp.write()`` per event, as a live relay writes
chunks; the concatenation is the stored bytes exactly)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import aiohttp
from aiohttp import web

from alicode_gw.respcache.keys import Entry
from alicode_gw.state import RequestContext

_EVENT_END = re.compile(rb"\r?\n\r?\n")
_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)


def sse_events(body: bytes) -> Iterator[bytes]:
    """``body`` cut after each blank line (the end of an SSE event); a tail without
    one is yielded last."""
    start = 0
    for match in _EVENT_END.finditer(body):
        yield body[start : match.end()]
        start = match.end()
    if start < len(body):
        yield body[start:]


async def replay(ctx: RequestContext, entry: Entry, headers: dict[str, str]) -> web.StreamResponse:
    """The stored answer with ``headers`` (the request id, the cache headers …)."""
    if not entry.stream:
        ctx.ttfb = time.perf_counter() - ctx.started
        return web.Response(
            status=entry.status, body=entry.body, headers={**entry.headers, **headers}
        )
    response = web.StreamResponse(
        status=entry.status,
        headers={
            **entry.headers,
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **headers,
        },
    )
    try:
        await response.prepare(ctx.request)
        for event in sse_events(entry.body):
            await response.write(event)
            if ctx.ttfb is None:
                ctx.ttfb = time.perf_counter() - ctx.started
        await response.write_eof()
    except _CLIENT_GONE:
        pass  # nothing to drain: the answer was paid for at the hit price already
    return response
