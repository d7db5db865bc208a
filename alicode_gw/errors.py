"""The one exception tree of the gateway and the one place errors are rendered.

Code anywhere in a request raises a :class:`GatewayError` subclass (translating
library exceptions at the boundary with ``raise ... from exc``). The request
handler in :mod:`alicode_gw.app` catches it and calls :func:`render`, which
produces Anthropic's error shape on Anthropic routes and OpenAI's on the OpenAI
route. After a stream has started, :func:`sse_error_event` gives the in-band form.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from enum import Enum

from aiohttp import web


class Flavor(Enum):
    """Which API's error shape a route speaks."""

    ANTHROPIC = "anthropic"
    OPENAI = "openai"
    HTML = "html"  # the dashboard's pages (/dashboard, /admin): a page, not JSON


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status: int = 500
    error_type: str = "api_error"
    openai_type: str = "api_error"
    openai_code: str | None = None
    # The shape to render in when the error knows it better than the request context
    # (a 405 is raised while routing, before the context learns the route's flavor).
    flavor: Flavor | None = None

    def __init__(
        self,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})
        self.param = param


class InvalidRequestError(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    error_type = "authentication_error"
    openai_type = "invalid_request_error"
    openai_code = "invalid_api_key"


class InsufficientCreditsError(GatewayError):
    """402: the product documents' ``insufficient_credits`` type."""

    status = 402
    error_type = "insufficient_credits"
    openai_type = "insufficient_quota"
    openai_code = "insufficient_quota"


class PermissionDeniedError(GatewayError):
    status = 403
    error_type = "permission_error"
    openai_type = "permission_error"
    openai_code = "model_not_allowed"


class NotFoundError(GatewayError):
    status = 404
    error_type = "not_found_error"
    openai_type = "invalid_request_error"
    openai_code = "not_found"


class MethodNotAllowedError(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    openai_type = "invalid_request_error"

    def __init__(
        self, method: str, path: str, allowed: list[str], flavor: Flavor | None = None
    ) -> None:
        super().__init__(
            f"Method {method} is not allowed for {path}; use {', '.join(allowed)}.",
            headers={"Allow": ", ".join(allowed)},
        )
        self.flavor = flavor


class RequestTooLargeError(GatewayError):
    status = 413
    error_type = "request_too_large"
    openai_type = "invalid_request_error"
    openai_code = "request_too_large"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    error_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class RateLimitError(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"
    # Which gateway limit refused (the metrics label); None: the upstream's own 429.
    limit: str | None = None


class ApiError(GatewayError):
    """500: a bug in the gateway. The message never carries internals."""


class UpstreamError(GatewayError):
    """502: the upstream failed (connection error or 5xx) and retries ran out."""

    status = 502


class ServiceUnavailableError(GatewayError):
    """503: the gateway cannot serve now (no healthy credential, Redis down, draining)."""

    status = 503
    error_type = "overloaded_error"
    openai_type = "server_error"


class GatewayTimeoutError(GatewayError):
    status = 504
    error_type = "timeout_error"
    openai_type = "timeout"


class OverloadedError(GatewayError):
    """529: the upstream reported overload on every attempt, or this process has as many
    requests in flight as it may (``max_in_flight``)."""

    status = 529
    error_type = "overloaded_error"
    openai_type = "server_error"


def anthropic_body(error_type: str, message: str, request_id: str) -> bytes:
    return json.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        },
        separators=(",", ":"),
    ).encode()


def openai_body(err: GatewayError) -> bytes:
    return json.dumps(
        {
            "error": {
                "message": err.message,
                "type": err.openai_type,
                "param": err.param,
                "code": err.openai_code,
            }
        },
        separators=(",", ":"),
    ).encode()


# Every dashboard answer carries these (its pages through dashboard/render.py, its
# errors through render below): no script but the gateway's own files, no framing.
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def html_body(err: GatewayError, request_id: str) -> bytes:
    """The dashboard's error page (the message escaped; no template: it cannot fail)."""
    title = f"{err.status} {err.error_type.replace('_', ' ')}"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        '<link rel="stylesheet" href="/dashboard/static/style.css"></head><body>'
        f'<main class="error"><h1>{html.escape(title)}</h1><p>{html.escape(err.message)}</p>'
        f'<p class="muted">Request id {html.escape(request_id)}</p>'
        '<p><a href="/dashboard">Back to the dashboard</a></p></main></body></html>'
    ).encode()


def render(err: GatewayError, request_id: str, flavor: Flavor = Flavor.ANTHROPIC) -> web.Response:
    """The single place an error becomes an HTTP response."""
    flavor = err.flavor or flavor
    headers = {k: v for k, v in err.headers.items() if k.lower() != "content-type"}
    headers["request-id"] = request_id
    if flavor is Flavor.HTML:
        headers.update(HTML_HEADERS)
        return web.Response(
            status=err.status,
            body=html_body(err, request_id),
            content_type="text/html",
            charset="utf-8",
            headers=headers,
        )
    if flavor is Flavor.OPENAI:
        body = openai_body(err)
        headers["x-request-id"] = request_id
    else:
        body = anthropic_body(err.error_type, err.message, request_id)
    return web.Response(
        status=err.status, body=body, content_type="application/json", headers=headers
    )


def sse_error_event(err: GatewayError, request_id: str) -> bytes:
    """The in-band form of an error once an Anthropic stream has started."""
    return (
        b"event: error\ndata: " + anthropic_body(err.error_type, err.message, request_id) + b"\n\n"
    )


_BY_STATUS: dict[int, type[GatewayError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: RequestTooLargeError,
    415: UnsupportedMediaTypeError,
    429: RateLimitError,
    500: ApiError,
    502: UpstreamError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
    529: OverloadedError,
}


def error_for_status(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> GatewayError:
    """The error class for an HTTP status (another 4xx: invalid request; 5xx: upstream)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InvalidRequestError if status < 500 else UpstreamError
    err = cls(message, headers=headers)
    err.status = status
    return err
