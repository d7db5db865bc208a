"""``GET /v1/messages/batches/{id}/results``: the upstream's JSONL relayed as bytes, on
each request (the gateway keeps no copy; the custom_ids are the customer's own).
``await resp.write()`` is the backpressure."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from alicode_gw.batches import owner
from alicode_gw.batches.objects import Batch, not_submitted_lines
from alicode_gw.errors import UpstreamError
from alicode_gw.state import RequestContext

RELAY_CHUNK = 64 * 1024
JSONL = "application/binary"  # what the API answers (the SDK asks for it)


async def relay(ctx: RequestContext, upstream: owner.Upstream, batch: Batch) -> web.StreamResponse:
    if batch.settlement == "released":  # never run upstream: every request errored
        body = b"".join(not_submitted_lines(batch))
        return web.Response(body=body, headers=ctx.headers(**{"content-type": JSONL}))
    response = await owner.call(upstream, batch, "GET", "/results", ctx.request.headers)
    finished = False
    try:
        ctx.upstream_request_id = response.headers.get("request-id")
        if response.status != 200:
            return owner.passed_error(ctx, batch, response, await response.content.read(64 * 1024))
        content_type = response.headers.get("content-type", JSONL)
        resp = web.StreamResponse(headers=ctx.headers(**{"content-type": content_type}))
        await resp.prepare(ctx.request)
        async for chunk in response.content.iter_chunked(RELAY_CHUNK):
            try:
                await resp.write(chunk)
            except ConnectionResetError:  # the client left (aiohttp's is a subclass): stop
                return resp
        finished = True
        await resp.write_eof()
        return resp
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError("The upstream connection failed while sending the results.") from exc
    finally:
        if finished:
            response.release()
        else:  # a connection in the middle of a body is not reused
            response.close()
