"""Calls on a batch's owning credential: only the pooled credential that submitted a
batch can read, cancel or delete it upstream, so these calls do not go through the
pool's pick (there is no other credential to try). The customer's key never goes
upstream (:func:`alicode_gw.upstream.headers.outbound_headers` builds the headers), and
the upstream's batch id, URL and credential never come back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import asyncpg
from aiohttp import web

from alicode_gw.batches import store
from alicode_gw.batches.objects import Batch
from alicode_gw.errors import UpstreamError
from alicode_gw.state import RequestContext
from alicode_gw.upstream.client import refusal
from alicode_gw.upstream.credentials import Credential
from alicode_gw.upstream.headers import outbound_headers

UPSTREAM_BATCHES = "/v1/messages/batches"
CREDENTIAL_GONE = (
    "The upstream credential this batch was submitted with is no longer available (the "
    "operator disabled or removed it), so the batch cannot be reached; contact the operator."
)


@dataclass(frozen=True, slots=True)
class Upstream:
    """What a call to the upstream needs (the gateway's State or the worker's parts)."""

    db: asyncpg.Pool
    http: aiohttp.ClientSession
    url: str
    connect_timeout: float
    read_timeout: float


async def call(
    upstream: Upstream,
    batch: Batch,
    method: str,
    suffix: str = "",
    client_headers: Mapping[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """``method`` on the batch upstream (``suffix``: ``/cancel``, ``/results``). The
    open response is the caller's to read and release. 502 when the owning credential
    is gone or disabled, or the upstream cannot be reached."""
    if batch.upstream_id is None or batch.credential_id is None:
        raise UpstreamError("The batch was never accepted upstream.")
    owner = await store.owner_credential(upstream.db, batch.credential_id)
    if owner is None or not owner.active:
        raise UpstreamError(CREDENTIAL_GONE)
    credential = Credential(owner.id, "", 1, owner.secret)
    headers = outbound_headers(client_headers or {}, credential)
    headers.pop("content-type", None)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=upstream.connect_timeout, sock_read=upstream.read_timeout
    )
    url = f"{upstream.url}{UPSTREAM_BATCHES}/{batch.upstream_id}{suffix}"
    try:
        return await upstream.http.request(
            method, url, headers=headers, timeout=timeout, allow_redirects=False
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError("The upstream could not be reached; retry shortly.") from exc


def passed_error(
    ctx: RequestContext, batch: Batch, response: aiohttp.ClientResponse, body: bytes
) -> web.Response:
    """An upstream error answer to a call on a batch, passed on as messages pass theirs
    (the gateway's request id in it, the gateway's batch id for the upstream's in its
    message); an upstream 5xx, or a redirect (never followed), is the gateway's 502."""
    if batch.upstream_id:
        body = body.replace(batch.upstream_id.encode(), batch.id.encode())
    failed = refusal(ctx, response, body)
    status = failed.status if 400 <= failed.status < 500 else 502
    return web.Response(
        status=status, body=failed.body, headers={**failed.headers, **ctx.headers()}
    )
