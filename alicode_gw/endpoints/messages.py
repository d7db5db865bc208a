"""``POST /v1/messages``: Anthropic's Messages API, relayed as received (the request
path is :mod:`alicode_gw.pipeline`)."""

from __future__ import annotations

from aiohttp import web

from alicode_gw import pipeline
from alicode_gw.requestbody import read_json
from alicode_gw.state import RequestContext


async def handle_messages(ctx: RequestContext) -> web.StreamResponse:
    limit = ctx.state.config.max_body_bytes
    # No local of this frame keeps the body: the pipeline lets go of it (pipeline.serve).
    return await pipeline.serve(ctx, *await read_json(ctx.request, limit), pipeline.ANTHROPIC)
