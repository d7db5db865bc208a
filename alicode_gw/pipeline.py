"""The request path shared by ``/v1/messages``, ``/v1/chat/completions`` and
``/v1/messages/count_tokens``, one :class:`~alicode_gw.state.RequestContext` threaded
through:

    [route: authenticate] → validate → model (catalog, allow-list) → admit ∥ hold
    → forward (retries before the first byte) → relay (JSON or SSE) → [answer sent]
    → conclude (settle or release, limits finish: a tracked task, the answer waits
    for no database)

Authentication is declared on the route (:mod:`alicode_gw.routes`) and done by the root
handler before an endpoint runs: ``ctx.key`` is set here. The endpoints only read their
body and choose a :class:`Surface` (how the client side speaks).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from alicode_gw.errors import InvalidRequestError, PermissionDeniedError
from alicode_gw.files.inline import inline_request
from alicode_gw.identity.auth import ApiKey
from alicode_gw.limits.limiter import Admission
from alicode_gw.money.billing import Hold
from alicode_gw.money.catalog import ModelInfo
from alicode_gw.money.contract import Usage
from alicode_gw.money.usd import format_usd
from alicode_gw.respcache.keys import Entry
from alicode_gw.respcache.replay import replay
from alicode_gw.respcache.store import Lookup
from alicode_gw.state import RequestContext
from alicode_gw.upstream.affinity import affinity_key
from alicode_gw.upstream.client import Refusal, open_upstream
from alicode_gw.upstream.headers import passed_headers
from alicode_gw.upstream.relay import (
    RelayResult,
    StreamFormat,
    json_result,
    read_upstream_json,
    relay_stream,
)

UPSTREAM_PATH = "/v1/messages"


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    model: str
    max_tokens: int
    stream: bool


def validate(payload: dict[str, Any]) -> MessagesRequest:
    """The checks the gateway needs before anything goes upstream (the upstream
    validates the rest and its 400s are passed through)."""
    model = payload.get("model")
    if model is None:
        raise InvalidRequestError("model: Field required", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model: Input should be a non-empty string", param="model")
    max_tokens = payload.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequestError("max_tokens: Field required", param="max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequestError(
            "max_tokens: Input should be an integer of at least 1", param="max_tokens"
        )
    messages = payload.get("messages")
    if messages is None:
        raise InvalidRequestError("messages: Field required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages: Input should be a non-empty list", param="messages")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequestError("stream: Input should be a valid boolean", param="stream")
    return MessagesRequest(model, max_tokens, stream)


MODEL_LOGGED_CHARS = 200  # of the model name a client sent, in the access line


def note_model(ctx: RequestContext, payload: Any) -> None:
    """Keep the model as the client sent it, for the access line (also when the request
    is refused for it)."""
    model = payload.get("model") if isinstance(payload, dict) else None
    if isinstance(model, str):
        ctx.model = model[:MODEL_LOGGED_CHARS]


def resolve_model(ctx: RequestContext, name: str) -> ModelInfo:
    """The model ``name`` as the catalog knows it (its own entry, its snapshot's base
    or its family), if the request's key may use it (by the name it sent, its target
    or the entry it is priced as)."""
    ctx.model = name[:MODEL_LOGGED_CHARS]
    info = ctx.state.catalog.resolve(name)
    if info is None:
        raise InvalidRequestError(
            f"model: '{name}' is not available on this gateway; see GET /v1/models",
            param="model",
        )
    if not ctx.authenticated.allows(name, info.target, info.priced_as):
        raise PermissionDeniedError(f"This API key is not allowed to use the model '{name}'.")
    ctx.priced_model = info.priced_as
    return info


def check_max_tokens(max_tokens: int, info: ModelInfo) -> None:
    """The model's output ceiling, as the API checks it (and before any hold is sized)."""
    ceiling = info.capabilities.max_output_tokens
    if max_tokens > ceiling:
        raise InvalidRequestError(
            f"max_tokens: {max_tokens} > {ceiling}, which is the maximum allowed number "
            f"of output tokens for {info.target}",
            param="max_tokens",
        )


def upstream_body(body: bytes, payload: dict[str, Any], info: ModelInfo) -> bytes:
    """The body to send: unchanged, except an alias replaced by its target model."""
    if not info.is_alias:
        return body
    return json.dumps({**payload, "model": info.target}, separators=(",", ":")).encode()


class Surface(Protocol):
    """How the client side speaks: Anthropic's API relays as is; the OpenAI surface
    (:mod:`alicode_gw.endpoints.openai_chat`) re-encodes answers and errors."""

    def json_body(self, raw: bytes, model: str) -> bytes: ...

    def stream_format(self, model: str) -> StreamFormat | None: ...

    def refusal(self, refusal: Refusal, ctx: RequestContext) -> web.StreamResponse: ...


class AnthropicSurface:
    """``/v1/messages``: bytes as received, upstream client errors passed through."""

    def json_body(self, raw: bytes, model: str) -> bytes:
        return raw

    def stream_format(self, model: str) -> StreamFormat | None:
        return None

    def refusal(self, refusal: Refusal, ctx: RequestContext) -> web.StreamResponse:
        return web.Response(
            status=refusal.status, body=refusal.body, headers={**refusal.headers, **ctx.headers()}
        )


ANTHROPIC = AnthropicSurface()


async def serve(
    ctx: RequestContext, body: bytes, payload: dict[str, Any], surface: Surface
) -> web.StreamResponse:
    """The pipeline after the body is read: ``body`` is what goes upstream (bar an
    alias rewrite), ``payload`` its decoded form. The caller keeps no reference to
    either (``serve(ctx, *await read_json(...), ...)``): the pipeline lets go of the
    decoded form before the upstream call and of the body once it is upstream, so a
    long stream does not hold its prompt, nor the several times larger decoded prompt,
    for its whole length."""
    state = ctx.state
    note_model(ctx, payload)
    request = validate(payload)
    body, payload = await inline_request(ctx, body, payload)  # file_id sources: their bytes
    key, ip = ctx.authenticated, ctx.ip
    info = resolve_model(ctx, request.model)
    check_max_tokens(request.max_tokens, info)
    if state.config.routing == "affinity":  # which credential holds its prompt cache
        ctx.affinity = affinity_key(key.account_id, info.target, payload)
    estimate = await state.tokens.count_async(payload, key.account_id)
    admission, hold = await _admit_and_hold(ctx, key, info, request, estimate, ip)
    outcome = _Outcome()
    try:
        headers = dict(admission.headers)
        if info.is_alias:
            headers["x-alicode-model"] = info.target
        body = upstream_body(body, payload, info)
        del payload  # see the docstring
        cached = await _cache_lookup(ctx, body, request.stream, surface)
        if cached is not None:
            headers.update(cached.headers())
            if cached.entry is not None:
                return await _replay_hit(ctx, cached.entry, headers, hold, outcome)
        opened = await open_upstream(ctx, UPSTREAM_PATH, body)
        del body  # upstream now (see the docstring)
        if isinstance(opened, Refusal):
            return surface.refusal(opened, ctx)
        return await _relay(
            ctx, opened[0], request.stream, headers, surface, info, hold, outcome, cached
        )
    finally:
        _conclude(ctx, admission, outcome)


async def _admit_and_hold(
    ctx: RequestContext,
    key: ApiKey,
    info: ModelInfo,
    request: MessagesRequest,
    estimate: int,
    ip: str,
) -> tuple[Admission, Hold]:
    """The limits (Redis) and the billing hold (PostgreSQL, or none: the account's credit
    lease on this node) at once: one round trip of latency at most. Whichever refuses,
    the other is undone before the error (the limits' verdict first) reaches the
    client."""
    state = ctx.state
    worst_tokens = estimate + request.max_tokens  # reserved against the key's budget
    hold = (ctx.request_id, key.id, request.model, estimate, request.max_tokens, ip)
    leased = state.billing.hold_leased(
        *hold,
        account_id=key.account_id,
        priced=info,
        spend_capped=key.spend_cap_nanos is not None,
    )
    state.metrics.hold("database" if leased is None else "lease")
    if leased is not None:  # the hold took no I/O: only the limits are waited for
        try:
            return await state.limiter.admit(ip, key, worst_tokens), leased
        except BaseException:
            await state.billing.release(ctx.request_id)
            raise
    admitted, held = await asyncio.gather(
        state.limiter.admit(ip, key, worst_tokens),
        state.billing.hold(*hold, account_id=key.account_id),
        return_exceptions=True,
    )
    if isinstance(admitted, BaseException):
        if not isinstance(held, BaseException):
            await state.billing.release(ctx.request_id)
        raise admitted
    if isinstance(held, BaseException):
        await state.limiter.finish(admitted, 0)
        raise held
    return admitted, held


def _tokens(usage: Usage) -> int:
    """What a request counts against its key's rolling token budget."""
    return (
        usage.input_tokens
        + usage.output_tokens
        + usage.cache_creation_5m
        + usage.cache_creation_1h
        + usage.cache_read
    )


@dataclass(slots=True)
class _Outcome:
    """What the upstream produced, kept as soon as it is known (so that a failure after
    it still settles it rather than releasing the hold), with its cost from the hold's
    price snapshot: the figure ``billing.settle`` records."""

    result: RelayResult | None = None
    cost_nanos: int = 0
    hit_pct: int | None = None  # a response cache hit, billed at this % of its cost

    def record(self, result: RelayResult, hold: Hold, hit_pct: int | None = None) -> None:
        self.result, self.hit_pct = result, hit_pct
        if result.generated:
            self.cost_nanos = hold.cost_nanos(result.usage, hit_pct=hit_pct)


# --- the response cache (alicode_gw/respcache; docs/response-cache.md) --------------------


async def _cache_lookup(
    ctx: RequestContext, body: bytes, stream: bool, surface: Surface
) -> Lookup | None:
    """The cache's verdict on the body going upstream; None when the cache is off or
    the surface is not Anthropic's (only ``/v1/messages`` is cached)."""
    cache = ctx.state.respcache
    if cache is None or not isinstance(surface, AnthropicSurface):
        return None
    lookup = await cache.lookup(ctx.authenticated, ctx.request.headers, body, stream)
    ctx.response_cache = lookup.outcome
    return lookup


async def _replay_hit(
    ctx: RequestContext, entry: Entry, headers: dict[str, str], hold: Hold, outcome: _Outcome
) -> web.StreamResponse:
    """A hit: billed at the hit price on the original's usage, replayed as stored."""
    hit_pct = ctx.state.config.response_cache_hit_pct
    outcome.record(RelayResult(entry.usage, True, False, True), hold, hit_pct)
    ctx.tokens_saved = entry.tokens_saved
    if not entry.stream:
        headers["x-alicode-cost-usd"] = format_usd(outcome.cost_nanos)
    return await replay(ctx, entry, ctx.headers(**headers))


def _cache_store(
    ctx: RequestContext,
    cached: Lookup | None,
    upstream: aiohttp.ClientResponse,
    result: RelayResult,
    body: bytes | None,
    stream: bool,
) -> None:
    """Store a complete, successful answer of a miss (a task the answer does not wait for)."""
    cache = ctx.state.respcache
    if cache is None or cached is None or cached.key is None or body is None:
        return
    if upstream.status == 200 and result.complete and result.generated:
        headers = passed_headers(upstream.headers)
        cache.store_later(cached.key, Entry(stream, 200, headers, result.usage, body))


async def _relay(
    ctx: RequestContext,
    upstream: aiohttp.ClientResponse,
    stream: bool,
    headers: dict[str, str],
    surface: Surface,
    info: ModelInfo,
    hold: Hold,
    outcome: _Outcome,
    cached: Lookup | None = None,
) -> web.StreamResponse:
    """The upstream's answer relayed; what was generated is left in ``outcome``."""
    if stream:
        fmt = surface.stream_format(info.target)
        cache = ctx.state.respcache
        capture = cache.max_bytes if cache and cached and cached.key else 0
        response, result = await relay_stream(ctx, upstream, ctx.headers(**headers), fmt, capture)
        outcome.record(result, hold)
        _cache_store(ctx, cached, upstream, result, result.captured, stream)
        return response
    raw = await read_upstream_json(ctx, upstream)
    result = json_result(raw)
    outcome.record(result, hold)
    _cache_store(ctx, cached, upstream, result, raw, stream)
    if result.generated:
        headers["x-alicode-cost-usd"] = format_usd(outcome.cost_nanos)
    return web.Response(
        status=upstream.status,
        body=surface.json_body(raw, info.target),
        headers={**passed_headers(upstream.headers), **headers},
    )


def _conclude(ctx: RequestContext, admission: Admission, outcome: _Outcome) -> None:
    """Record what the request used (for the access log and metrics), then queue the
    settlement of what was generated (or the release of the hold) and the limits finish
    at once, before the answer leaves: both then reach their store ahead of anything the
    client sends next (its next hold, its next admit). A tracked task awaits them; the
    answer does not."""
    state = ctx.state
    tokens = 0
    result = outcome.result
    if result is not None and result.generated:
        usage = result.usage  # a hit's: the original's, billed at the hit price
        # A hit generated nothing: it reports no tokens and spends none of the budget.
        used = usage if outcome.hit_pct is None else Usage()
        ctx.input_tokens = used.input_tokens
        ctx.output_tokens = used.output_tokens
        ctx.cache_write_tokens = used.cache_creation_5m + used.cache_creation_1h
        ctx.cache_read_tokens = used.cache_read
        ctx.cost_nanos = outcome.cost_nanos
        tokens = _tokens(used)
        money = state.billing.settle_later(
            ctx.request_id,
            usage,
            estimated=result.estimated,
            cost_nanos=outcome.cost_nanos,
            hit_pct=outcome.hit_pct,
        )
    else:
        money = state.billing.release_later(ctx.request_id)
    limits = state.limiter.finish_later(admission, tokens)
    state.tasks.spawn(_settled(money, limits), name=f"settle-{ctx.request_id}")


async def _settled(money: Coroutine[Any, Any, Any], limits: Coroutine[Any, Any, None]) -> None:
    """Both steps were queued already; awaiting them only collects the outcomes (each
    logs or journals its own failure)."""
    try:
        await money
    finally:
        await limits
