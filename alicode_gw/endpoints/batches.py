"""``/v1/messages/batches``: Anthropic's Message Batches API (the work is in
:mod:`alicode_gw.batches`; see docs/batches.md)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from alicode_gw.batches import objects, owner, results, store, submit
from alicode_gw.batches.objects import Batch
from alicode_gw.clientip import public_base_url
from alicode_gw.errors import InvalidRequestError, NotFoundError, UpstreamError
from alicode_gw.requestbody import read_json
from alicode_gw.state import RequestContext

MAX_PAGE = 1000


def _json(ctx: RequestContext, obj: Any, status: int = 200) -> web.Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return web.Response(
        status=status, body=body, headers=ctx.headers(**{"content-type": "application/json"})
    )


def _base(ctx: RequestContext) -> str:
    config = ctx.state.config
    return public_base_url(ctx.request, config.trusted_proxies, config.public_base_url)


def _upstream(ctx: RequestContext) -> owner.Upstream:
    state = ctx.state
    return owner.Upstream(
        state.db,
        state.http,
        state.config.upstream_url,
        state.config.upstream_connect_timeout,
        state.config.upstream_first_byte_timeout,
    )


async def _batch(ctx: RequestContext) -> Batch:
    batch_id = ctx.params["batch_id"]
    batch = await store.get(ctx.state.db, ctx.authenticated.account_id, batch_id)
    if batch is None:
        raise NotFoundError(f"message_batch: {batch_id} not found")
    return batch


async def handle_create(ctx: RequestContext) -> web.StreamResponse:
    config = ctx.state.config
    _, payload = await read_json(ctx.request, config.batch_max_body_bytes)
    created = await submit.create(ctx, payload)
    if isinstance(created, web.Response):
        return created
    return _json(ctx, objects.batch_json(created, _base(ctx)))


async def handle_list(ctx: RequestContext) -> web.StreamResponse:
    query = ctx.request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise InvalidRequestError("limit: Input should be a valid integer", param="limit") from None
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequestError(f"limit: Input should be between 1 and {MAX_PAGE}", param="limit")
    before_id, after_id = query.get("before_id"), query.get("after_id")
    if before_id and after_id:
        raise InvalidRequestError("Cannot specify both before_id and after_id")
    found = await store.page(
        ctx.state.db,
        ctx.authenticated.account_id,
        limit=limit,
        before_id=before_id or None,
        after_id=after_id or None,
    )
    if found is None:
        raise NotFoundError(f"message_batch: {before_id or after_id} not found")
    batches, has_more = found
    return _json(ctx, objects.list_page(batches, has_more, _base(ctx)))


async def handle_get(ctx: RequestContext) -> web.StreamResponse:
    return _json(ctx, objects.batch_json(await _batch(ctx), _base(ctx)))


async def handle_cancel(ctx: RequestContext) -> web.StreamResponse:
    batch = await _batch(ctx)
    if batch.status == "ended":
        raise InvalidRequestError(f"Batch {batch.id} has already ended and cannot be canceled.")
    if batch.status == "submitting":
        raise InvalidRequestError(f"Batch {batch.id} is still being submitted; retry shortly.")
    if batch.status == "in_progress":
        response = await owner.call(_upstream(ctx), batch, "POST", "/cancel", ctx.request.headers)
        try:
            body = await response.read()
        finally:
            response.release()
        if response.status >= 300:
            return owner.passed_error(ctx, batch, response, body)
        await store.mark_canceling(ctx.state.db, batch.id)
        batch = await _batch(ctx)
    return _json(ctx, objects.batch_json(batch, _base(ctx)))


async def _ended(ctx: RequestContext, refusal: str) -> Batch:
    """The batch, once ended; before, a 400: ``Batch <id> <refusal>``."""
    batch = await _batch(ctx)
    if batch.status != "ended":
        raise InvalidRequestError(f"Batch {batch.id} {refusal}")
    return batch


async def handle_delete(ctx: RequestContext) -> web.StreamResponse:
    batch = await _ended(ctx, "has not ended yet; cancel it and delete it once it has ended.")
    if batch.upstream_id is not None:
        response = await owner.call(_upstream(ctx), batch, "DELETE", "", ctx.request.headers)
        response.release()  # a batch already gone upstream (404) is just as deleted
        if response.status >= 500:
            raise UpstreamError("The upstream failed to delete the batch; retry shortly.")
    await store.mark_deleted(ctx.state.db, batch.id)
    return _json(ctx, objects.deleted_json(batch.id))


async def handle_results(ctx: RequestContext) -> web.StreamResponse:
    batch = await _ended(
        ctx, "has not ended yet; its results are available once its processing_status is ended."
    )
    return await results.relay(ctx, _upstream(ctx), batch)
