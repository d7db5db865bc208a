"""``GET /v1/models`` and ``GET /v1/models/{model_id}``: what the upstream serves and
the gateway prices.

The list is the upstream's own model list (:mod:`alicode_gw.upstream.models`) cut to
the models that have a price (their own row, their snapshot's base or their family),
with the upstream's display names and dates and the price entry's limits, plus the
gateway's aliases (their display name says what they point at). Until the upstream's
list has been read, the catalog's priced models and aliases are listed instead.
A model id is found when it resolves to a price.

Anthropic clients (requests with an ``anthropic-version`` header) get Anthropic's shape
with its pagination; everyone else gets OpenAI's list shape. Errors follow the same
choice of shape.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web

from alicode_gw.errors import Flavor, InvalidRequestError, NotFoundError
from alicode_gw.money.catalog import ModelInfo
from alicode_gw.state import RequestContext

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
OWNER = "anthropic"


def flavor_of(request: web.BaseRequest) -> Flavor:
    """Anthropic's shape for Anthropic clients (they send ``anthropic-version``),
    OpenAI's for the rest (the route table asks this before authenticating)."""
    if "anthropic-version" in request.headers:
        return Flavor.ANTHROPIC
    return Flavor.OPENAI


def anthropic_model(info: ModelInfo) -> dict[str, Any]:
    caps = info.capabilities
    return {
        "type": "model",
        "id": info.id,
        "display_name": info.display_name,
        "created_at": info.created_at.isoformat().replace("+00:00", "Z"),
        "lifecycle": "active",
        "max_input_tokens": caps.context_window,
        "max_tokens": caps.max_output_tokens,
        "capabilities": {
            "image_input": {"supported": caps.vision},
            "thinking": {"supported": caps.thinking},
        },
    }


def openai_model(info: ModelInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "object": "model",
        "created": int(info.created_at.timestamp()),
        "owned_by": OWNER,
    }


def ordered(models: list[ModelInfo]) -> list[ModelInfo]:
    """Newest first, as Anthropic lists them; ties by id for a stable order."""
    return sorted(models, key=lambda m: (-m.created_at.timestamp(), m.id))


def page(models: list[ModelInfo], query: dict[str, str]) -> dict[str, Any]:
    """Anthropic's cursor pagination over ``models`` (already ordered)."""
    raw_limit = query.get("limit", str(DEFAULT_LIMIT))
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise InvalidRequestError(f"limit: must be an integer from 1 to {MAX_LIMIT}")
    limit = int(raw_limit)
    ids = [m.id for m in models]
    before, after = query.get("before_id"), query.get("after_id")
    if before and after:
        raise InvalidRequestError("before_id and after_id cannot be used together")
    for cursor in (before, after):
        if cursor and cursor not in ids:
            raise InvalidRequestError(f"unknown model id in cursor: {cursor!r}")
    if before:
        end = ids.index(before)
        chosen = models[max(0, end - limit) : end]
        has_more = end - limit > 0
    else:
        start = ids.index(after) + 1 if after else 0
        chosen = models[start : start + limit]
        has_more = start + limit < len(models)
    return {
        "data": [anthropic_model(m) for m in chosen],
        "has_more": has_more,
        "first_id": chosen[0].id if chosen else None,
        "last_id": chosen[-1].id if chosen else None,
    }


def _json(ctx: RequestContext, value: dict[str, Any]) -> web.Response:
    return web.Response(
        body=json.dumps(value, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=ctx.headers(),
    )


def served(ctx: RequestContext) -> list[ModelInfo]:
    """What ``/v1/models`` lists (see the module docstring)."""
    catalog = ctx.state.catalog
    upstream = ctx.state.upstream_models.models
    if upstream is None:
        return catalog.named()
    listed: list[ModelInfo] = []
    for model in upstream:
        info = catalog.resolve(model.id)
        if info is not None:
            listed.append(
                dataclasses.replace(
                    info, display_name=model.display_name, created_at=model.created_at
                )
            )
    served_ids = {info.id for info in listed}
    listed += [i for i in catalog.named() if i.is_alias and i.id not in served_ids]
    return listed


def found(ctx: RequestContext, model_id: str) -> ModelInfo | None:
    """``model_id`` as ``/v1/models/{id}`` shows it: priced, named as the upstream
    names it when it serves it."""
    info = ctx.state.catalog.resolve(model_id)
    if info is None:
        return None
    for model in ctx.state.upstream_models.models or ():
        if model.id == model_id:
            return dataclasses.replace(
                info, display_name=model.display_name, created_at=model.created_at
            )
    return info


async def handle_list(ctx: RequestContext) -> web.StreamResponse:
    models = ordered(served(ctx))
    if ctx.flavor is Flavor.ANTHROPIC:
        return _json(ctx, page(models, dict(ctx.request.query)))
    return _json(ctx, {"object": "list", "data": [openai_model(m) for m in models]})


async def handle_get(ctx: RequestContext) -> web.StreamResponse:
    model_id = ctx.params["model_id"]
    info = found(ctx, model_id)
    if info is None:
        raise NotFoundError(f"model: {model_id}", param="model")
    if ctx.flavor is Flavor.ANTHROPIC:
        return _json(ctx, anthropic_model(info))
    return _json(ctx, openai_model(info))
