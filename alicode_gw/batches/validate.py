"""The checks of a batch's body (``POST /v1/messages/batches``): its shape here, each
request's ``params`` by the same rules as ``/v1/messages`` (:func:`pipeline.validate`,
:func:`pipeline.resolve_model`, :func:`pipeline.check_max_tokens`). The first invalid
request fails the whole batch with a 400 naming ``requests.N.…``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from alicode_gw import pipeline
from alicode_gw.errors import GatewayError, InvalidRequestError
from alicode_gw.money.catalog import ModelInfo
from alicode_gw.state import RequestContext

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One request of a batch, as the customer sent it (``params`` unchanged)."""

    custom_id: str
    params: dict[str, Any]
    model: str
    max_tokens: int


@contextmanager
def at(where: str) -> Iterator[None]:
    """Errors raised inside name their field under ``where`` (``requests.3.params``)."""
    try:
        yield
    except GatewayError as err:
        if err.param:  # "max_tokens: …" → "requests.3.params.max_tokens: …"
            param, message = f"{where}.{err.param}", f"{where}.{err.message}"
        else:
            param, message = where, f"{where}: {err.message}"
        renamed = type(err)(message, headers=err.headers, param=param)
        raise renamed from err


def validate_batch(payload: dict[str, Any], max_requests: int) -> list[BatchRequest]:
    """The batch's requests, or a 400 naming the first invalid field. Pure."""
    requests = payload.get("requests")
    if requests is None:
        raise InvalidRequestError("requests: Field required", param="requests")
    if not isinstance(requests, list) or not requests:
        raise InvalidRequestError("requests: Input should be a non-empty list", param="requests")
    if len(requests) > max_requests:
        raise InvalidRequestError(
            f"requests: a batch may hold at most {max_requests} requests, got {len(requests)}",
            param="requests",
        )
    extra = sorted(set(payload) - {"requests"})
    if extra:
        raise InvalidRequestError(f"{extra[0]}: Extra inputs are not permitted", param=extra[0])
    seen: set[str] = set()
    out = []
    for n, item in enumerate(requests):
        where = f"requests.{n}"
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{where}: Input should be an object", param=where)
        custom_id = item.get("custom_id")
        if custom_id is None:
            raise InvalidRequestError(
                f"{where}.custom_id: Field required", param=f"{where}.custom_id"
            )
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise InvalidRequestError(
                f"{where}.custom_id: should be 1-64 characters of letters, digits, '_' and '-'",
                param=f"{where}.custom_id",
            )
        if custom_id in seen:
            raise InvalidRequestError(
                f"{where}.custom_id: '{custom_id}' is not unique within the batch",
                param=f"{where}.custom_id",
            )
        seen.add(custom_id)
        params = item.get("params")
        if params is None:
            raise InvalidRequestError(f"{where}.params: Field required", param=f"{where}.params")
        if not isinstance(params, dict):
            raise InvalidRequestError(
                f"{where}.params: Input should be an object", param=f"{where}.params"
            )
        extra = sorted(set(item) - {"custom_id", "params"})
        if extra:
            raise InvalidRequestError(
                f"{where}.{extra[0]}: Extra inputs are not permitted", param=f"{where}.{extra[0]}"
            )
        with at(f"{where}.params"):
            checked = pipeline.validate(params)
            if checked.stream:
                raise InvalidRequestError(
                    "stream: batch requests cannot stream (a batch returns finished messages)",
                    param="stream",
                )
        out.append(BatchRequest(custom_id, params, checked.model, checked.max_tokens))
    return out


def check_models(ctx: RequestContext, requests: list[BatchRequest]) -> list[ModelInfo]:
    """Each request's model as the catalog prices it, allowed for the key, with its
    ``max_tokens`` within the model's ceiling (no I/O: the catalog is in memory)."""
    infos = []
    for n, request in enumerate(requests):
        with at(f"requests.{n}.params"):
            info = pipeline.resolve_model(ctx, request.model)
            pipeline.check_max_tokens(request.max_tokens, info)
        infos.append(info)
    return infos
