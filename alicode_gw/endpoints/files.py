"""``/v1/files``: Anthropic's Files API (``client.beta.files.*``), per account.

``POST /v1/files`` (upload: :mod:`alicode_gw.files.upload`), ``GET /v1/files`` (list,
newest first), ``GET /v1/files/{file_id}`` (metadata), ``GET
/v1/files/{file_id}/content`` (the bytes, streamed from the database one row at a
time), ``DELETE /v1/files/{file_id}``. A file of another account, or a deleted one, is
a 404 like one that never existed. The ``anthropic-beta: files-api-2025-04-14`` header
is accepted, not required. Uploads and downloads count against the key's limits.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from alicode_gw.errors import InvalidRequestError, NotFoundError
from alicode_gw.files import store, upload
from alicode_gw.files.objects import (
    FileRecord,
    deleted_json,
    download_headers,
    file_json,
    page_json,
    parse_list_query,
    valid_file_id,
)
from alicode_gw.state import RequestContext


def _json(ctx: RequestContext, value: dict[str, Any]) -> web.Response:
    return web.Response(
        body=json.dumps(value, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=ctx.headers(),
    )


def _not_found(file_id: str) -> NotFoundError:
    return NotFoundError(f"File not found: {file_id[:80]}")


async def _own_file(ctx: RequestContext) -> FileRecord:
    file_id = ctx.params["file_id"]
    record = None
    if valid_file_id(file_id):
        record = await store.get(ctx.state.db, ctx.authenticated.account_id, file_id)
    if record is None:
        raise _not_found(file_id)
    return record


async def handle_upload(ctx: RequestContext) -> web.StreamResponse:
    state = ctx.state
    admission = await state.limiter.admit(ctx.ip, ctx.authenticated)
    try:
        record = await upload.receive(state, ctx.authenticated.account_id, ctx.request)
    finally:
        await state.limiter.finish(admission, 0)
    return _json(ctx, file_json(record))


async def handle_list(ctx: RequestContext) -> web.StreamResponse:
    query = parse_list_query(ctx.request.query)
    page = await store.list_page(ctx.state.db, ctx.authenticated.account_id, query)
    if page is None:
        cursor = query.before_id or query.after_id or ""
        raise InvalidRequestError(
            f"No file {cursor[:80]!r} to page from.",
            param="before_id" if query.before_id else "after_id",
        )
    records, has_more = page
    return _json(ctx, page_json(records, has_more, query))


async def handle_get(ctx: RequestContext) -> web.StreamResponse:
    return _json(ctx, file_json(await _own_file(ctx)))


async def handle_delete(ctx: RequestContext) -> web.StreamResponse:
    file_id = ctx.params["file_id"]
    deleted = valid_file_id(file_id) and await store.soft_delete(
        ctx.state.db, ctx.authenticated.account_id, file_id
    )
    if not deleted:
        raise _not_found(file_id)
    return _json(ctx, deleted_json(file_id))


async def handle_content(ctx: RequestContext) -> web.StreamResponse:
    """The bytes as stored, with the stored type and a download name; written one
    chunk row at a time (``await resp.write()`` is the backpressure)."""
    state = ctx.state
    record = await _own_file(ctx)
    admission = await state.limiter.admit(ctx.ip, ctx.authenticated)
    try:
        response = web.StreamResponse(headers=ctx.headers(**download_headers(record)))
        await response.prepare(ctx.request)
        if ctx.request.method != "HEAD":
            async for chunk in store.chunks(state.db, record.id):
                await response.write(chunk)
        return response
    finally:
        await state.limiter.finish(admission, 0)
