"""The end of every request: one JSON access-log line and the request metrics.

:func:`finish` is called once per request by the root handler in :mod:`alicode_gw.app`.
The line goes to the logger ``alicode_gw.access`` (``alicode-gw`` writes it to stderr
as bare JSON, one object per line, encoded by :mod:`alicode_gw.jsontext`, for journald
or any log shipper). It holds
identifiers and numbers only — never a prompt, a response, a customer key (only its
public id), or an upstream credential (only its operator-chosen name). ``path`` is the
request's path without its query (also for a request no route matched), ``model`` the
model as the client sent it (also when it was refused for it), both cut at 200
characters::

    {"time": "2025-01-01T12:00:00.123Z", "request_id": "req_…", "key_id": "ab12cd34ef56",
     "account_id": 7, "client_ip": "203.0.113.9", "method": "POST", "route": "messages",
     "path": "/v1/messages", "model": "claude-sonnet-4-5-20250929", "status": 200,
     "input_tokens": 12, "output_tokens": 40, "cache_write_tokens": 0,
     "cache_read_tokens": 0, "cost_usd": "0.000636",
     "duration_ms": 812.4, "ttfb_ms": 301.2, "upstream": "main", "attempts": 1,
     "response_cache": "MISS", "tokens_saved": 0,
     "affinity": true}

``response_cache`` is the response cache's verdict (``HIT``, ``MISS``, ``BYPASS``; null
when it was not consulted) and ``tokens_saved`` a hit's original input + output tokens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import IO, TYPE_CHECKING

from alicode_gw import jsontext
from alicode_gw.clientip import client_ip
from alicode_gw.errors import AuthenticationError, GatewayError, RateLimitError
from alicode_gw.money.usd import format_usd
from alicode_gw.observe.metrics import NO_MODEL, OTHER_MODEL

if TYPE_CHECKING:
    from alicode_gw.state import RequestContext

LOGGER_NAME = "alicode_gw.access"
access_log = logging.getLogger(LOGGER_NAME)

# Status logged for a request whose handler was cancelled (client or shutdown) before
# it produced a response (nginx's convention).
CLIENT_CLOSED = 499
FLUSH_INTERVAL = 0.25  # seconds an access line may wait in the buffer
ATOMIC_WRITE = 4096  # PIPE_BUF on Linux: the largest write a pipe keeps whole
PATH_LOGGED_CHARS = 200  # of the request path (never its query) in the access line


class LineBuffer(logging.Handler):
    """Collects access lines and writes them to ``stream`` together: one write per
    :meth:`flush` (every ``FLUSH_INTERVAL`` from :func:`flush_loop`, when ``max_lines``
    are waiting, and at exit) instead of one write and one flush per request."""

    def __init__(self, stream: IO[str], max_lines: int = 256) -> None:
        super().__init__()
        self.stream = stream
        self.max_lines = max_lines
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging's contract: never raise from a handler
            self.handleError(record)
            return
        self.add(line)

    def add(self, line: str) -> None:
        """Queue one formatted line (:func:`finish` calls this directly: no log record
        is made per request)."""
        self._lines.append(line)
        if len(self._lines) >= self.max_lines:
            self.flush()

    def flush(self) -> None:
        """Write the waiting lines in chunks of whole lines of at most ``ATOMIC_WRITE``
        bytes, each flushed on its own: a write that small to a pipe is atomic, so the
        workers of ``serve --workers N`` sharing one stderr never interleave lines."""
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        chunk: list[str] = []
        size = 0
        try:
            for line in lines:
                if chunk and size + len(line) + 1 > ATOMIC_WRITE:
                    self._write(chunk)
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line) + 1
            self._write(chunk)
        except (OSError, ValueError):  # the stream is gone (closed at exit)
            pass

    def _write(self, lines: list[str]) -> None:
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()


def configure(stream: IO[str], level: int | str = logging.INFO) -> None:
    """Send access lines to ``stream`` as bare JSON lines (not through the root
    logger's format), buffered (:class:`LineBuffer`). Called by the CLI at start-up,
    never at import."""
    handler = LineBuffer(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.handlers = [handler]
    access_log.propagate = False
    access_log.setLevel(level)


def flush() -> None:
    """Write out the buffered access lines now."""
    for handler in access_log.handlers:
        handler.flush()


async def flush_loop(interval: float = FLUSH_INTERVAL) -> None:
    """Perpetual task: access lines reach the log within ``interval`` seconds."""
    try:
        while True:
            await asyncio.sleep(interval)
            flush()
    finally:
        flush()


def model_label(ctx: RequestContext) -> str:
    """The model as a bounded metrics label: the catalog entry it is priced as (a
    family, not each id it matches)."""
    if ctx.priced_model is not None:
        return ctx.priced_model
    return NO_MODEL if ctx.model is None else OTHER_MODEL


def count_error(ctx: RequestContext, err: GatewayError) -> None:
    """Count the refusals the metrics report by class (called where errors render)."""
    metrics = ctx.state.metrics
    if isinstance(err, AuthenticationError):
        metrics.auth_failures.inc()
    elif isinstance(err, RateLimitError) and err.limit is not None:
        metrics.limit_rejections.labels(err.limit).inc()


_ROUTED = frozenset({"messages", "chat_completions"})  # what the routing metrics count


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def finish(ctx: RequestContext, status: int) -> None:
    """Observe the request's metrics and write its access line."""
    duration = time.perf_counter() - ctx.started
    state = ctx.state
    model = model_label(ctx)
    metrics = state.metrics
    metrics.request_done(ctx.route, model, status, duration, ctx.ttfb)
    if ctx.input_tokens or ctx.output_tokens or ctx.cost_nanos:
        metrics.usage(
            model,
            input_tokens=ctx.input_tokens,
            output_tokens=ctx.output_tokens,
            cache_write_tokens=ctx.cache_write_tokens,
            cache_read_tokens=ctx.cache_read_tokens,
            cost_nanos=ctx.cost_nanos,
        )
    if ctx.route in _ROUTED:
        metrics.routed(
            ctx.upstream_name,
            ctx.affinity is not None,
            ctx.cache_read_tokens,
            ctx.cache_write_tokens,
            ctx.input_tokens,
        )
    if not access_log.isEnabledFor(logging.INFO):
        return
    ip = ctx.client_ip or client_ip(ctx.request, state.config.trusted_proxies)
    now = time.time()
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        + f".{int(now % 1 * 1000):03d}Z",
        "request_id": ctx.request_id,
        "key_id": ctx.key_public_id,
        "account_id": ctx.account_id,
        "client_ip": ip,
        "method": ctx.request.method,
        "route": ctx.route,
        "path": ctx.request.path[:PATH_LOGGED_CHARS],
        "model": ctx.model,
        "status": status,
        "input_tokens": ctx.input_tokens,
        "output_tokens": ctx.output_tokens,
        "cache_write_tokens": ctx.cache_write_tokens,
        "cache_read_tokens": ctx.cache_read_tokens,
        "cost_usd": None if ctx.cost_nanos is None else format_usd(ctx.cost_nanos),
        "duration_ms": _ms(duration),
        "ttfb_ms": _ms(ctx.ttfb),
        "upstream": ctx.upstream_name,
        "upstream_request_id": ctx.upstream_request_id,
        "attempts": ctx.attempts,
        "response_cache": ctx.response_cache,
        "tokens_saved": ctx.tokens_saved,
        "affinity": ctx.affinity is not None,
    }
    text = jsontext.dumps(line)
    handlers = access_log.handlers
    if len(handlers) == 1 and isinstance(handlers[0], LineBuffer):  # as configure() sets
        handlers[0].add(text)
    else:
        access_log.info(text)
