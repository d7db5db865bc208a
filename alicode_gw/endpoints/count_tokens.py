"""``POST /v1/messages/count_tokens``: exact from the upstream (free, through the key
pool) or estimated with tiktoken, per ``ALICODE_COUNT_TOKENS``.

In ``upstream`` mode an upstream that cannot answer (no healthy credential, 5xx,
overload) falls back to the estimate; the ``x-alicode-count-source`` header says which
one a response is. Upstream client errors (400…) pass through as received.
"""

from __future__ import annotations

import json

from aiohttp import web

from alicode_gw.errors import GatewayError, InvalidRequestError
from alicode_gw.files.inline import inline_request
from alicode_gw.pipeline import resolve_model, upstream_body
from alicode_gw.requestbody import read_json
from alicode_gw.state import RequestContext
from alicode_gw.upstream.client import Refusal, open_upstream
from alicode_gw.upstream.headers import passed_headers
from alicode_gw.upstream.relay import read_upstream_json

UPSTREAM_PATH = "/v1/messages/count_tokens"


def _validate(payload: dict) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model: Field required", param="model")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages: Input should be a non-empty list", param="messages")
    return model


async def handle_count_tokens(ctx: RequestContext) -> web.StreamResponse:
    state = ctx.state
    body, payload = await read_json(ctx.request, state.config.max_body_bytes)
    model = _validate(payload)
    body, payload = await inline_request(ctx, body, payload)  # file_id sources: their bytes
    info = resolve_model(ctx, model)
    admission = await state.limiter.admit(ctx.ip, ctx.authenticated)
    try:
        if state.config.count_tokens == "upstream":
            try:
                return await _from_upstream(ctx, upstream_body(body, payload, info))
            except GatewayError as exc:
                # The upstream could not answer (5xx family, or every credential rate
                # limited): the estimate is always available. Its other verdicts stand.
                if exc.status < 500 and exc.status != 429:
                    raise
        count = await state.tokens.count_async(payload, ctx.authenticated.account_id)
        return web.Response(
            body=json.dumps({"input_tokens": count}).encode(),
            content_type="application/json",
            headers=ctx.headers(**{"x-alicode-count-source": "estimate"}),
        )
    finally:
        await state.limiter.finish(admission, 0)


async def _from_upstream(ctx: RequestContext, body: bytes) -> web.StreamResponse:
    opened = await open_upstream(ctx, UPSTREAM_PATH, body)
    if isinstance(opened, Refusal):
        return web.Response(
            status=opened.status, body=opened.body, headers={**opened.headers, **ctx.headers()}
        )
    upstream, _ = opened
    raw = await read_upstream_json(ctx, upstream)
    return web.Response(
        status=upstream.status,
        body=raw,
        headers={
            **passed_headers(upstream.headers),
            **ctx.headers(**{"x-alicode-count-source": "upstream"}),
        },
    )
