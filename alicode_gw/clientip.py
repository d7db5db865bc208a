"""The client's IP address, believing forwarding headers only from trusted proxies.

When the direct peer is inside ``ALICODE_TRUSTED_PROXIES`` (e.g. nginx on 127.0.0.1),
``X-Forwarded-For`` is read right to left, skipping further trusted proxies, and the
first untrusted address is the client; without that header, ``X-Real-IP``. Otherwise,
or when the header holds no valid address, the client is the peer itself. A header
from an untrusted peer is ignored, so a client cannot choose its own IP.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from alicode_gw.config import Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN = "unknown"


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "v4:port"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_ip(request: web.BaseRequest, trusted: tuple[Network, ...]) -> str:
    """The client address of ``request`` as a canonical string."""
    remote = request.remote or ""
    if not trusted and "." in remote and ":" not in remote:
        return remote  # an IPv4 peer as the socket reports it: already canonical
    peer = _address(remote)
    if peer is None:
        return request.remote or UNKNOWN  # e.g. a Unix socket
    if not trusted or not _trusted(peer, trusted):
        return str(peer)
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        hops = [_address(part) for part in forwarded.split(",")]
        for hop in reversed(hops):
            if hop is None:
                break  # a garbled entry: trust nothing to its left
            if not _trusted(hop, trusted):
                return str(hop)
    real = request.headers.get("x-real-ip")
    if real:
        address = _address(real)
        if address is not None:
            return str(address)
    return str(peer)


def _forwarded(request: web.BaseRequest, trusted: tuple[Network, ...], header: str) -> str:
    """The first value of a forwarding header, from a trusted proxy only ("" otherwise)."""
    peer = _address(request.remote or "")
    if peer is None or not trusted or not _trusted(peer, trusted):
        return ""
    return request.headers.get(header, "").split(",")[0].strip()


def came_over_tls(request: web.BaseRequest, trusted: tuple[Network, ...]) -> bool:
    """Whether the client's connection was TLS: this server's own, or as a trusted proxy
    tells with ``X-Forwarded-Proto: https`` (from anyone else the header is ignored)."""
    if request.secure:
        return True
    return _forwarded(request, trusted, "x-forwarded-proto").lower() == "https"


def public_base_url(
    request: web.BaseRequest, trusted: tuple[Network, ...], configured: str | None
) -> str:
    """The gateway's base URL as its clients reach it (for URLs it hands out, e.g. a
    batch's ``results_url``): ``configured`` when set; else the scheme and host the
    request came in on, taking ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` only from a
    trusted proxy."""
    if configured:
        return configured
    proto = _forwarded(request, trusted, "x-forwarded-proto").lower()
    scheme = proto if proto in ("http", "https") else request.scheme
    host = _forwarded(request, trusted, "x-forwarded-host") or request.host
    return f"{scheme}://{host}"
