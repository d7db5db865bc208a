"""``GET /metrics``: Prometheus exposition of :mod:`alicode_gw.observe.metrics`, for
loopback (``ALICODE_METRICS_ALLOW``) or the operator's bearer token."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from alicode_gw.clientip import client_ip
from alicode_gw.errors import PermissionDeniedError
from alicode_gw.state import RequestContext

_FORWARDING_HEADERS = ("x-forwarded-for", "x-real-ip", "forwarded")


def _allowed(ctx: RequestContext) -> bool:
    config = ctx.state.config
    request = ctx.request
    token = config.metrics_token
    if token:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), token.encode()
        ):
            return True
    address = client_ip(request, config.trusted_proxies)
    if address == (request.remote or "") and any(h in request.headers for h in _FORWARDING_HEADERS):
        # Forwarded by a proxy we do not trust: the real client is unknown (e.g. nginx on
        # loopback without ALICODE_TRUSTED_PROXIES), so its loopback address proves nothing.
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in config.metrics_allow)


async def handle_metrics(ctx: RequestContext) -> web.StreamResponse:
    """``GET /metrics``: loopback (``ALICODE_METRICS_ALLOW``) or the operator token."""
    if not _allowed(ctx):
        raise PermissionDeniedError(
            "/metrics is reachable only from ALICODE_METRICS_ALLOW or with ALICODE_METRICS_TOKEN."
        )
    state = ctx.state
    await state.metrics.refresh_node(state.keypool, state.billing)
    body = await asyncio.to_thread(state.metrics.exposition)
    headers = ctx.headers(**{"cache-control": "no-store"})
    headers["content-type"] = CONTENT_TYPE_LATEST
    return web.Response(body=body, headers=headers)
