"""Which headers cross between a client and the upstream, in each direction.

The customer's key, cookies and client-identifying headers never go upstream; the
upstream credential is added here and nowhere else. Of the upstream's answer only
:data:`PASSED_RESPONSE_HEADERS` reach a client (``anthropic-ratelimit-*`` describe the
operator's account). Every upstream call (messages, count_tokens, batches, the model
list) builds its headers with :func:`outbound_headers`.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from alicode_gw import __version__
from alicode_gw.upstream.credentials import Credential

# Request headers the client may set that the upstream needs to see.
FORWARDED_REQUEST_HEADERS = ("anthropic-version", "anthropic-beta", "content-type")
# The anthropic-version the upstream receives when the client sent none.
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
# Upstream response headers a client may see (besides the body itself).
PASSED_RESPONSE_HEADERS = ("content-type", "retry-after", "x-should-retry")
USER_AGENT = f"alicode_gw/{__version__}"


def outbound_headers(client_headers: Mapping[str, str], credential: Credential) -> dict[str, str]:
    """The headers of an upstream call: the pool's ``credential``, what of the client's
    the upstream needs, and the body asked for as it is (the upstream session does not
    decompress)."""
    headers = {"x-api-key": credential.secret, "user-agent": USER_AGENT}
    for name in FORWARDED_REQUEST_HEADERS:
        value = client_headers.get(name)
        if value is not None:
            headers[name] = value
    headers.setdefault("content-type", "application/json")
    headers.setdefault("anthropic-version", DEFAULT_ANTHROPIC_VERSION)
    headers["accept-encoding"] = "identity"
    return headers


def passed_headers(upstream: CIMultiDictProxy[str] | CIMultiDict[str]) -> dict[str, str]:
    return {name: upstream[name] for name in PASSED_RESPONSE_HEADERS if name in upstream}
