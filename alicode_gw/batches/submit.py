"""Creating a batch: validate every request, hold the worst case at the batch price,
submit it upstream on one pooled credential (the attempt loop of
:func:`alicode_gw.upstream.client.open_upstream`: a 429/5xx tries another credential),
record which credential owns it. A batch the balance cannot cover is a 402 and nothing
goes upstream; a batch the upstream refuses or never accepts gives its hold back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from alicode_gw.batches import store
from alicode_gw.batches.objects import BATCH_ID_PREFIX, Batch
from alicode_gw.batches.owner import UPSTREAM_BATCHES
from alicode_gw.batches.validate import BatchRequest, at, check_models, validate_batch
from alicode_gw.errors import InsufficientCreditsError, InvalidRequestError, UpstreamError
from alicode_gw.files.inline import inline_files
from alicode_gw.ids import random_token
from alicode_gw.money.billing import spend_cap_reached
from alicode_gw.money.catalog import ModelInfo
from alicode_gw.money.usd import format_usd
from alicode_gw.state import RequestContext, State
from alicode_gw.upstream.client import Refusal, open_upstream
from alicode_gw.upstream.relay import read_upstream_json

BATCH_LIFETIME = timedelta(hours=24)  # the upstream's: unfinished requests then expire
# A batch's hold outlives the batch by this much (a settlement after the hold expired
# is still billed; see billing.expire_holds).
HOLD_TTL = BATCH_LIFETIME + timedelta(hours=24)


def new_batch_id() -> str:
    return BATCH_ID_PREFIX + random_token(24)


async def prepare_params(
    state: State, account_id: int, request: BatchRequest, info: ModelInfo, room: int
) -> tuple[dict[str, Any], int]:
    """The one place a batch request's ``params`` are made ready for the upstream: as
    sent, except (as on ``/v1/messages``) each ``file_id`` source replaced by the file's
    bytes (docs/files.md; at most ``room`` bytes more) and an alias by its target model.
    Also how many bytes the files added."""
    params, inlined = await inline_files(state, account_id, request.params, room)
    grown = len(_encoded(params)) - len(_encoded(request.params)) if inlined else 0
    if info.is_alias:
        params = {**params, "model": info.target}
    return params, grown


def _encoded(params: dict[str, Any]) -> bytes:
    return json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()


async def _prepared(
    ctx: RequestContext, requests: list[BatchRequest], infos: list[ModelInfo]
) -> list[dict[str, Any]]:
    """Every request's upstream ``params``; a file error names its request. The files of
    one batch add at most ``ALICODE_BATCH_MAX_BODY_BYTES`` to it."""
    room = ctx.state.config.batch_max_body_bytes
    prepared = []
    for n, (request, info) in enumerate(zip(requests, infos, strict=True)):
        with at(f"requests.{n}.params"):
            params, grown = await prepare_params(
                ctx.state, ctx.authenticated.account_id, request, info, room
            )
        room -= grown
        prepared.append(params)
    return prepared


async def _hold(ctx: RequestContext, batch_id: str, items: list[store.HoldItem]) -> None:
    state, key = ctx.state, ctx.authenticated
    opened = await _open(ctx, batch_id, items)
    credit = state.billing.credit
    if (
        opened.outcome == "insufficient"
        and credit is not None
        and await credit.shrink(key.account_id, opened.hold_nanos)  # this node's lease
    ):
        opened = await _open(ctx, batch_id, items)
    if opened.outcome == "insufficient":
        raise InsufficientCreditsError(
            "Your credit balance is too low for this batch (it may cost up to "
            f"${format_usd(opened.hold_nanos)} at the batch price). Top up to continue."
        )
    if opened.outcome == "over_cap":
        raise spend_cap_reached()
    if opened.outcome == "unknown_model":
        raise InvalidRequestError("requests: a model of this batch is no longer available")
    if opened.outcome != "held":
        raise InvalidRequestError("the API key no longer exists")


async def _open(ctx: RequestContext, batch_id: str, items: list[store.HoldItem]) -> store.Opened:
    return await store.open_batch(
        ctx.state.db,
        batch_id=batch_id,
        key_id=ctx.authenticated.id,
        client_ip=ctx.ip,
        items=items,
        expires_at=datetime.now(UTC) + BATCH_LIFETIME,
        hold_ttl_seconds=HOLD_TTL.total_seconds(),
    )


async def create(ctx: RequestContext, payload: dict[str, Any]) -> Batch | web.Response:
    """The new batch (``in_progress``), or the upstream's refusal to pass through."""
    state, key = ctx.state, ctx.authenticated
    requests = validate_batch(payload, state.config.batch_max_requests)
    infos = check_models(ctx, requests)
    params = await _prepared(ctx, requests, infos)  # the estimate counts inlined files
    items = [
        store.HoldItem(
            r.custom_id, r.model, await state.tokens.count_async(p, key.account_id), r.max_tokens
        )
        for r, p in zip(requests, params, strict=True)
    ]
    admission = await state.limiter.admit(ctx.ip, key, 0)  # one request of the key's RPM
    try:
        batch_id = new_batch_id()
        await _hold(ctx, batch_id, items)
        try:
            return await _submit(ctx, batch_id, requests, params)
        except BaseException:
            await store.release(state.db, batch_id, hide=True)
            raise
    finally:
        await state.limiter.finish(admission, 0)


async def _submit(
    ctx: RequestContext, batch_id: str, requests: list[BatchRequest], params: list[dict[str, Any]]
) -> Batch | web.Response:
    state, key = ctx.state, ctx.authenticated
    upstream_requests = [
        {"custom_id": r.custom_id, "params": p} for r, p in zip(requests, params, strict=True)
    ]
    body = json.dumps({"requests": upstream_requests}, separators=(",", ":")).encode()
    opened = await open_upstream(ctx, UPSTREAM_BATCHES, body)
    if isinstance(opened, Refusal):
        await store.release(state.db, batch_id, hide=True)
        return web.Response(
            status=opened.status, body=opened.body, headers={**opened.headers, **ctx.headers()}
        )
    response, credential = opened
    raw = await read_upstream_json(ctx, response)
    try:
        upstream_id = json.loads(raw)["id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UpstreamError("The upstream accepted the batch with an unreadable answer.") from exc
    if not isinstance(upstream_id, str) or not upstream_id:
        raise UpstreamError("The upstream accepted the batch with an unreadable answer.")
    await store.mark_submitted(
        state.db,
        batch_id,
        upstream_id=upstream_id,
        credential_id=credential.id,
        next_poll_seconds=state.config.batch_poll_interval,
    )
    batch = await store.get(state.db, key.account_id, batch_id)
    assert batch is not None
    return batch
