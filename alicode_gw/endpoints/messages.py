"""``POST /v1/messages``: Anthropic's Messages API, relayed as received (the request
path is :mod:`alicode_gw.pipeline`)."""

from __future__ import annotations

from aiohttp import web

from alicode_gw import pipeline
from alicode_gw.requestbody import read_json
from alicode_gw.state import RequestContext


async def handle_messages(ctx: RequestContext) -> web.StreamResponse:
    body, payload = await read_json(ctx.request, ctx.state.config.max_body_bytes)
    return await pipeline.serve(ctx, body, payload, pipeline.ANTHROPIC)
