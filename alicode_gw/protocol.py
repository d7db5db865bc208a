"""The HTTP/1.x connection layer under the route table: malformed requests and slow
clients are refused here, before any handler runs.

aiohttp's low-level server answers a request it cannot parse with a plain-text 400 that
quotes the raw request bytes and logs a traceback carrying them (the customer's key and
prompt); it serves request lines without a version (HTTP/0.9) or with ``HTTP/2.0``; and
it waits forever for a request head, a body or a chunk terminator that never comes. This
module replaces those behaviours:

* a protocol error is a 400 in Anthropic's error shape with a fresh ``request-id`` (the
  route is unknown: the request could not be parsed), the connection closed after it,
  and one DEBUG line naming the error's class; never a byte of the request. A parse
  error inside a body already handed to a handler fails that handler's body read
  instead (:func:`alicode_gw.requestbody.read_body` makes it a 400 in the route's shape).
* a request line that is not HTTP/1.0 or HTTP/1.1 is the same 400 (no route runs);
* read timeouts: a request head must be complete ``header_timeout`` seconds after its
  first byte; while a request body is incomplete, the client must send a byte at least
  every ``body_idle_timeout`` seconds (time the gateway itself is not reading does not
  count); an idle keep-alive connection is closed after ``keepalive_timeout`` (aiohttp's
  own timer, which also bounds the wait for a head that never starts). A head left
  unfinished behind a request still being answered (pipelining) closes the connection
  too, that request's answer included.

The hooks are aiohttp 3.14's :class:`~aiohttp.web_protocol.RequestHandler` (subclassed:
``handle_error``, ``data_received``, ``connection_lost``, ``log_exception``) and
:class:`aiohttp.web.Server` (whose ``__call__`` makes one handler per connection). The
subclass reads three of its parent's internals: the queue of parsed messages, its
parse-error record and the reading-paused flags; ``tests/test_protocol.py`` pins the
behaviour over raw sockets.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo

from alicode_gw.config import Config
from alicode_gw.errors import anthropic_body
from alicode_gw.ids import new_request_id

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

SUPPORTED_VERSIONS = frozenset({(1, 0), (1, 1)})

# Fixed explanations by error class, most specific first: aiohttp's own messages quote
# the request bytes, so they are never used.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.LineTooLong, "a request line or header is too long"),
    (http_exceptions.BadHttpMethod, "the request method is not valid"),
    (
        http_exceptions.BadStatusLine,
        "the request line is malformed (expected `METHOD /path HTTP/1.1` ending in CRLF)",
    ),
    (http_exceptions.InvalidURLError, "the request target is not a valid URL"),
    (http_exceptions.InvalidHeader, "a header name or value is invalid"),
    (http_exceptions.PayloadEncodingError, "the body's framing or encoding is malformed"),
)
_GENERIC_REASON = (
    "the request is not well-formed HTTP/1.1 (lines end in CRLF; header values contain no "
    "control characters and are not folded; Content-Length and Transfer-Encoding are not "
    "both present)"
)


@dataclass(frozen=True, slots=True)
class ReadTimeouts:
    """Seconds; see the module docstring."""

    header: float
    body_idle: float
    keepalive: float

    @classmethod
    def of(cls, config: Config) -> ReadTimeouts:
        return cls(config.header_timeout, config.body_idle_timeout, config.keepalive_timeout)


def describe(exc: BaseException | None) -> str:
    """A fixed sentence for a parse error (no request bytes)."""
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    return _GENERIC_REASON


def protocol_error(reason: str) -> web.Response:
    """The answer to a request that cannot be served as HTTP/1.x: Anthropic's error
    shape (no route, hence no other flavor), a fresh request id, connection closed."""
    request_id = new_request_id()
    body = anthropic_body("invalid_request_error", f"Malformed HTTP request: {reason}.", request_id)
    response = web.Response(
        status=400,
        body=body,
        content_type="application/json",
        headers={"request-id": request_id},
    )
    response.force_close()
    return response


def http1_only(handler: Handler) -> Handler:
    """``handler`` for HTTP/1.0 and HTTP/1.1 requests; any other version (an HTTP/0.9
    request line without a version, ``HTTP/2.0`` in an HTTP/1 request line) is refused
    before routing."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if tuple(request.version) not in SUPPORTED_VERSIONS:
            log.debug("refused a request line of HTTP/%d.%d", *request.version)
            return protocol_error("only HTTP/1.0 and HTTP/1.1 are served")
        return await handler(request)

    return handle


class GuardedRequestHandler(RequestHandler):
    """One connection: aiohttp's handler with protocol errors rendered without request
    bytes and the head/body read timeouts."""

    __slots__ = ("_head_started", "_last_data", "_payload", "_timeouts", "_watch")

    def __init__(self, manager: web.Server, *, timeouts: ReadTimeouts, **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=timeouts.keepalive, **kwargs)
        self._timeouts = timeouts
        self._watch: asyncio.TimerHandle | None = None
        self._last_data = 0.0
        self._head_started: float | None = None  # first byte of a head not yet complete
        self._payload: StreamReader | None = None  # the body of the newest parsed request

    # -- protocol errors --------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, http_exceptions.HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        log.debug("malformed HTTP request from %s: %s", self._peer(), type(exc).__name__)
        return protocol_error(describe(exc))

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp logs a failed read of a body nobody consumed (while it drains it after
        the answer) with its traceback; that is the client's malformed body, not a
        fault: one DEBUG line without the message."""
        exc = kw.get("exc_info")
        if isinstance(exc, (RequestPayloadError, http_exceptions.HttpProcessingError)):
            log.debug("unreadable request body from %s: %s", self._peer(), type(exc).__name__)
            return
        super().log_exception(*args, **kw)

    # -- read timeouts ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        if data:
            self._last_data = now
            if self._head_started is None and not self._body_open():
                self._head_started = now
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a head completed, or failed to parse
            self._head_started = None
            message, payload = self._messages[-1]
            if isinstance(message, _ErrInfo) and self._body_open():
                # The error is in the body a handler is reading: fail that read (a 400
                # in the route's shape) rather than answer a second time, and close.
                assert self._payload is not None
                self._messages.pop()
                self._payload.set_exception(RequestPayloadError("malformed body"))
                self._payload.feed_eof()
                self.close()
            else:
                self._payload = payload
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def _body_open(self) -> bool:
        return self._payload is not None and not self._payload.is_eof()

    def _deadline(self) -> float:
        if self._body_open():
            return self._last_data + self._timeouts.body_idle
        if self._head_started is not None:
            return self._head_started + self._timeouts.header
        return math.inf

    def _arm(self) -> None:
        if self._watch is None and self.transport is not None:
            deadline = self._deadline()
            if deadline < math.inf:
                self._watch = self._loop.call_at(deadline, self._check)

    def _check(self) -> None:
        self._watch = None
        if self.transport is None or self._force_close:
            return
        now = self._loop.time()
        if self._reading_paused or self._buffer_paused:
            self._last_data = now  # the gateway is not reading: the client is not late
        deadline = self._deadline()
        if now < deadline:
            self._arm()
            return
        what = "request body" if self._body_open() else "request head"
        log.debug("closed a connection from %s: %s too slow", self._peer(), what)
        self.force_close()

    def _peer(self) -> str:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class GatewayServer(web.Server):
    """``aiohttp.web.Server`` whose connections are :class:`GuardedRequestHandler`s and
    whose requests are HTTP/1.x only."""

    def __init__(self, handler: Handler, config: Config, **kwargs: Any) -> None:
        super().__init__(http1_only(handler), **kwargs)
        self._timeouts = ReadTimeouts.of(config)
        self._handler_kwargs = kwargs

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            self,
            timeouts=self._timeouts,
            loop=asyncio.get_running_loop(),
            **self._handler_kwargs,
        )
