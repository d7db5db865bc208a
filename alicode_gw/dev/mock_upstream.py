"""A mock Anthropic API server speaking the real wire format, with fault injection.

Used as the gateway's upstream by the tests, by ``alicode-gw dev`` and by the
benchmark. Built on aiohttp's low-level `aiohttp.web.Server` (no application, no
router). Answers are deterministic (see `alicode_gw.dev.mock_answers`).

Like the API, it rejects a content block of an unknown type with a 400 whose message
quotes the type as sent (what lets a client put words of its choosing into an upstream
error message), checks the source of image and document blocks (a base64 source's
media type and data, a text source's shape; a ``file`` source is a 404, since the mock
has no Files API of its own), and refuses a body over 32 MB with 413
``request_too_large``.

Faults are requested per request, either with a header ``x-mock-fault: k=v k=v`` or
with ``[[mock: k=v k=v]]`` anywhere in the text of the last user message (that one
survives a gateway that forwards bodies unchanged). Keys:

``status=N`` (400, 401, 403, 404, 413, 429, 500, 529: an Anthropic error response),
``error=credit_balance`` (the API's own 400 for an organisation out of credit),
``error=usage_limit`` (its 400 for one at the spend limit it set),
``retry_after=S`` (with status=429), ``only_key=K1,K2`` (faults hit only these
credentials), ``drop_after=N`` (streaming: close the connection after N events),
``error_after=N`` (streaming: an ``error`` event after N events, then end),
``first_byte_delay_ms=N``, ``chunk_delay_ms=N``, ``words=N`` (answer length),
``mode=tool|text`` (call the first tool even without a forcing ``tool_choice``).

The prompt cache is emulated per cache group (``groups``: key → group; by default each
key is its own organization), as :class:`~alicode_gw.dev.mock_cache.PromptCache`
describes: ``cache_read_input_tokens`` for a marked prefix the group saw within its TTL,
``cache_creation_input_tokens`` (and the ``cache_creation`` split) otherwise.

A ``system`` turn inside ``messages`` is accepted under the betas Claude Code sends
with one (``mid-conversation-system-2026-04-07``, ``per-turn-control-2026-07-01``),
and refused like the API refuses an unknown role without them. ``GET /v1/models`` serves
:attr:`MockUpstream.models` in the API's current shape; ``/v1/messages/batches`` is the
batch API of :mod:`alicode_gw.dev.mock_batches` (:attr:`MockUpstream.batches`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType, TracebackType
from typing import Any

from aiohttp import web

from alicode_gw.dev.mock_answers import (
    Directives,
    PromptCache,
    RequestError,
    build_answer,
    count_input_tokens,
    error_body,
    invalid,
    message_json,
    named_error,
    new_id,
    parse_directives,
    status_error,
    stream_events,
)
from alicode_gw.dev.mock_batches import BATCHES_PATH, RESULTS_CONTENT_TYPE, MockBatches
from alicode_gw.dev.mock_cache import MAX_BREAKPOINTS, count_breakpoints
from alicode_gw.dev.mock_models import MODELS, model_json
from alicode_gw.upstream.sse import format_event

__all__ = ["DEFAULT_MOCK_KEY", "Exchange", "MockUpstream", "serve"]

DEFAULT_MOCK_KEY = "sk-ant-mock-0000"

_ROUTES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "/v1/messages": ("POST",),
        "/v1/messages/count_tokens": ("POST",),
        "/v1/models": ("GET",),
    }
)
_REQUESTS_LIMIT = 4000
_TOKENS_LIMIT = 2_000_000
# Content-block types of a request message the API knows (others: a 400 quoting the type).
_BLOCK_TYPES = (
    "text", "image", "document", "search_result", "thinking", "redacted_thinking",
    "tool_use", "tool_result", "server_tool_use", "web_search_tool_result",
    "web_fetch_tool_result", "code_execution_tool_result", "mcp_tool_use",
    "mcp_tool_result", "container_upload",
)  # fmt: skip
_STREAM_ERROR = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'


@dataclass(slots=True)
class Exchange:
    """One request the mock received and what it sent back.

    `headers` has lower-cased names. `response_bytes` is exactly the response body
    written to the socket, in order (for streams: the SSE bytes, without the chunked
    transfer framing). `done` turns true once the handler has finished (also after a
    drop or a client disconnect; `aborted` tells those apart).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    api_key: str | None = None
    status: int = 0
    response_bytes: bytearray = field(default_factory=bytearray)
    done: bool = False
    aborted: bool = False
    request_id: str = ""


# ---------------------------------------------------------------- validation


# Betas under which a ``system`` turn may appear inside ``messages`` (Claude Code sends
# the first, and for its newest models the second).
SYSTEM_TURN_BETAS = frozenset({"mid-conversation-system-2026-04-07", "per-turn-control-2026-07-01"})


def _validate_common(body: Any, betas: frozenset[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("Request body must be a JSON object")
    if "model" not in body:
        raise invalid("model: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        raise invalid("model: Input should be a valid string")
    messages = body.get("messages")
    if messages is None:
        raise invalid("messages: Field required")
    if not isinstance(messages, list):
        raise invalid("messages: Input should be a valid list")
    if not messages:
        raise invalid("messages: at least one message is required")
    roles = ("user", "assistant")
    if SYSTEM_TURN_BETAS & betas:
        roles = ("user", "assistant", "system")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in roles:
            expected = " or ".join(f"'{role}'" for role in roles)
            raise invalid(f"messages.{i}.role: Input should be {expected}")
        if "content" not in msg:
            raise invalid(f"messages.{i}.content: Field required")
        _validate_blocks(f"messages.{i}.content", msg["content"])
    return body


def _validate_blocks(where: str, content: Any) -> None:
    if not isinstance(content, list):
        return
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if isinstance(kind, str) and kind not in _BLOCK_TYPES:
            expected = ", ".join(f"'{name}'" for name in _BLOCK_TYPES)
            raise invalid(
                f"{where}.{j}: Input tag '{kind}' found using 'type' does not match any"
                f" of the expected tags: {expected}"
            )
        if kind in _SOURCE_TYPES:
            _validate_source(f"{where}.{j}.source", kind, block.get("source"))
        elif kind == "tool_result":
            _validate_blocks(f"{where}.{j}.content", block.get("content"))


# The sources an image / document block takes, and the media types of a base64 one.
_SOURCE_TYPES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "image": ("base64", "url", "file"),
        "document": ("base64", "text", "url", "content", "file"),
    }
)
_BASE64_MEDIA: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "image": ("image/jpeg", "image/png", "image/gif", "image/webp"),
        "document": ("application/pdf",),
    }
)


def _validate_source(where: str, kind: str, source: Any) -> None:
    """An image's or document's source as the API checks it. A ``file`` source names a
    file of the upstream's own Files API, which the mock does not have: 404."""
    stype = source.get("type") if isinstance(source, dict) else None
    if stype not in _SOURCE_TYPES[kind]:
        raise invalid(f"{where}: Input tag '{stype}' found using 'type' is not expected")
    if stype == "file":
        raise RequestError(404, "not_found_error", f"File not found: {source.get('file_id')}")
    if stype == "base64":
        media = source.get("media_type")
        if media not in _BASE64_MEDIA[kind]:
            expected = ", ".join(f"'{m}'" for m in _BASE64_MEDIA[kind])
            raise invalid(f"{where}.media_type: Input should be {expected}")
        try:
            base64.b64decode(str(source.get("data")), validate=True)
        except binascii.Error:
            raise invalid(f"{where}.data: invalid base64 data") from None
    if stype == "text" and (
        source.get("media_type") != "text/plain" or not isinstance(source.get("data"), str)
    ):
        raise invalid(f"{where}: a text source needs media_type 'text/plain' and string data")


def _validate_count(body: Any, betas: frozenset[str] = frozenset()) -> dict[str, Any]:
    return _validate_common(body, betas)


def _validate_messages(body: Any, betas: frozenset[str] = frozenset()) -> dict[str, Any]:
    body = _validate_common(body, betas)
    if "max_tokens" not in body:
        raise invalid("max_tokens: Field required")
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise invalid("max_tokens: Input should be greater than or equal to 1")
    breakpoints = count_breakpoints(body)
    if breakpoints > MAX_BREAKPOINTS:
        raise invalid(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided."
            f" Found {breakpoints}."
        )
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise invalid(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if budget >= max_tokens:
            raise invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        raise invalid("stop_sequences: Input should be a valid list")
    return body


# The API's request size limit of the Messages and Token Counting endpoints.
MAX_REQUEST_BYTES = 32 * 1024 * 1024


async def _read_body(request: web.BaseRequest) -> bytes:
    """The body, up to the API's size limit (past it: its 413 request_too_large)."""
    too_large = RequestError(
        413, "request_too_large", "Request exceeds the maximum allowed number of bytes."
    )
    if (request.content_length or 0) > MAX_REQUEST_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise too_large
    return bytes(body)


def _betas(request: web.BaseRequest) -> frozenset[str]:
    """The ``anthropic-beta`` names of a request (comma-separated, possibly repeated)."""
    names = ",".join(request.headers.getall("anthropic-beta", ()))
    return frozenset(name.strip() for name in names.split(",") if name.strip())


def _rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _credential(request: web.BaseRequest) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class MockUpstream:
    """A running mock of ``api.anthropic.com``; see the module docstring for faults."""

    def __init__(
        self,
        api_keys: Iterable[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history: int = 1000,
        groups: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = frozenset(api_keys)
        # The prompt cache is per cache group (organization or workspace): ``groups``
        # maps a key to its group's name; a key not in it is a group of its own.
        self._groups = dict(groups or {})
        self._clock = clock
        self._caches: dict[str, PromptCache] = {}
        self._host = host
        self._port = port
        self._runner: web.ServerRunner | None = None
        self._org_id = str(uuid.uuid4())
        # What GET /v1/models serves, newest first: (id, display name, created_at).
        # A test may add or remove entries (a model shipped or retired upstream).
        self.models: list[tuple[str, str, str]] = list(MODELS)
        self.exchanges: collections.deque[Exchange] = collections.deque(maxlen=history)
        # The batch API (alicode_gw.dev.mock_batches); a test sets its clocks.
        self.batches = MockBatches(_validate_messages, self.prompt_cache)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("MockUpstream already started")
        server = web.Server(self._handle, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> MockUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def prompt_cache(self, api_key: str) -> PromptCache:
        """The prompt cache of ``api_key``'s cache group."""
        group = self._groups.get(api_key, api_key)
        cache = self._caches.get(group)
        if cache is None:
            cache = self._caches[group] = PromptCache(clock=self._clock)
        return cache

    # ------------------------------------------------------------ responses

    def _headers(self, ex: Exchange, *, limited: int | None = None) -> dict[str, str]:
        now = datetime.now(UTC)
        wait = limited or 0
        remaining = "0" if limited is not None else str(_REQUESTS_LIMIT - 1)
        tokens_left = "0" if limited is not None else str(_TOKENS_LIMIT - 1000)
        headers = {
            "request-id": ex.request_id,
            "anthropic-organization-id": self._org_id,
            "anthropic-ratelimit-requests-limit": str(_REQUESTS_LIMIT),
            "anthropic-ratelimit-requests-remaining": remaining,
            "anthropic-ratelimit-requests-reset": _rfc3339(now + timedelta(seconds=wait or 1)),
            "anthropic-ratelimit-tokens-limit": str(_TOKENS_LIMIT),
            "anthropic-ratelimit-tokens-remaining": tokens_left,
            "anthropic-ratelimit-tokens-reset": _rfc3339(now + timedelta(seconds=wait or 1)),
            "anthropic-ratelimit-input-tokens-limit": str(_TOKENS_LIMIT),
            "anthropic-ratelimit-input-tokens-remaining": tokens_left,
            "anthropic-ratelimit-input-tokens-reset": _rfc3339(now + timedelta(seconds=wait or 1)),
            "anthropic-ratelimit-output-tokens-limit": str(_TOKENS_LIMIT // 5),
            "anthropic-ratelimit-output-tokens-remaining": str(_TOKENS_LIMIT // 5),
            "anthropic-ratelimit-output-tokens-reset": _rfc3339(now + timedelta(seconds=1)),
            "server": "cloudflare",
            "cf-ray": secrets.token_hex(8) + "-SJC",
            "x-robots-tag": "none",
        }
        if limited is not None:
            headers["retry-after"] = str(limited)
        return headers

    async def _send_json(
        self,
        request: web.BaseRequest,
        ex: Exchange,
        status: int,
        obj: Any,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        resp = web.Response(status=status, body=payload, headers=headers or self._headers(ex))
        resp.content_type = "application/json"
        ex.status = status
        try:
            await resp.prepare(request)
            await resp.write_eof()  # sends the body
        except ConnectionError:  # the client went away
            ex.aborted = True
            return resp
        ex.response_bytes += payload
        return resp

    async def _send_error(
        self, request: web.BaseRequest, ex: Exchange, err: RequestError
    ) -> web.StreamResponse:
        headers = self._headers(ex, limited=err.retry_after if err.status == 429 else None)
        if err.status == 405:
            headers["allow"] = ", ".join(_ROUTES.get(ex.path, ("GET",)))
        body = error_body(err.etype, err.message, ex.request_id)
        return await self._send_json(request, ex, err.status, body, headers)

    # ------------------------------------------------------------ dispatch

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        ex = Exchange(
            method=request.method,
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            api_key=_credential(request),
            request_id=new_id("req_011C", 20),
        )
        self.exchanges.append(ex)
        try:
            ex.body = await _read_body(request)
            return await self._route(request, ex)
        except RequestError as err:
            return await self._send_error(request, ex, err)
        finally:
            ex.done = True

    async def _route(self, request: web.BaseRequest, ex: Exchange) -> web.StreamResponse:
        path, method = ex.path, ex.method
        if path == BATCHES_PATH or path.startswith(BATCHES_PATH + "/"):
            return await self._batches(request, ex)
        model_id: str | None = None
        if path.startswith("/v1/models/") and path.count("/") == 3:
            allowed: tuple[str, ...] = ("GET",)
            model_id = path.rsplit("/", 1)[1]
        else:
            allowed = _ROUTES.get(path, ())
        if not allowed:
            raise RequestError(404, "not_found_error", "Not found")
        if method not in allowed:
            raise RequestError(405, "invalid_request_error", f"Method {method} not allowed")
        if ex.api_key is None or ex.api_key not in self._keys:
            raise RequestError(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            raise invalid("anthropic-version: header is required")
        if path == "/v1/models":
            return await self._send_json(request, ex, 200, self._model_page(request))
        if model_id is not None:
            for mid, name, created in self.models:
                if mid == model_id:
                    return await self._send_json(request, ex, 200, model_json(mid, name, created))
            raise RequestError(404, "not_found_error", f"model: {model_id}")
        body = self._json_body(ex)
        directives = parse_directives(
            request.headers.get("x-mock-fault"), body if isinstance(body, dict) else None
        )
        if not directives.faults_apply(ex.api_key):
            directives = Directives(words=directives.words, mode=directives.mode)
        if directives.first_byte_delay_ms:
            await asyncio.sleep(directives.first_byte_delay_ms / 1000)
        if directives.status is not None:
            raise status_error(directives.status, directives.retry_after)
        if directives.error is not None:
            raise named_error(directives.error)
        if path == "/v1/messages/count_tokens":
            _validate_count(body, _betas(request))
            return await self._send_json(
                request, ex, 200, {"input_tokens": count_input_tokens(body)}
            )
        return await self._messages(request, ex, body, directives)

    async def _batches(self, request: web.BaseRequest, ex: Exchange) -> web.StreamResponse:
        """``/v1/messages/batches[/{id}[/cancel|/results]]`` (see mock_batches)."""
        rest = ex.path[len(BATCHES_PATH) :].strip("/")
        parts = rest.split("/") if rest else []
        allowed = {0: ("GET", "POST"), 1: ("GET", "DELETE")}.get(len(parts))
        if len(parts) == 2:
            allowed = {"cancel": ("POST",), "results": ("GET",)}.get(parts[1])
        if not allowed or len(parts) > 2:
            raise RequestError(404, "not_found_error", "Not found")
        if ex.method not in allowed:
            raise RequestError(405, "invalid_request_error", f"Method {ex.method} not allowed")
        if ex.api_key is None or ex.api_key not in self._keys:
            raise RequestError(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            raise invalid("anthropic-version: header is required")
        store, owner = self.batches, ex.api_key
        if not parts:
            if ex.method == "GET":
                return await self._send_json(
                    request, ex, 200, store.listing(owner, request.query, self.url)
                )
            body = self._json_body(ex)
            self._batch_fault(request, ex, body)
            batch = store.create(body, owner)
            return await self._send_json(request, ex, 200, store.to_json(batch, self.url))
        batch = store.find(parts[0], owner)
        action = parts[1] if len(parts) == 2 else ex.method
        if action == "DELETE":
            return await self._send_json(request, ex, 200, store.delete(batch))
        if action == "cancel":
            store.cancel(batch)
        elif action == "results":
            body = store.results(batch)
            headers = {**self._headers(ex), "content-type": RESULTS_CONTENT_TYPE}
            resp = web.Response(status=200, body=body, headers=headers)
            ex.status = 200
            await resp.prepare(request)
            await resp.write_eof()
            ex.response_bytes += body
            return resp
        return await self._send_json(request, ex, 200, store.to_json(batch, self.url))

    @staticmethod
    def _batch_fault(request: web.BaseRequest, ex: Exchange, body: Any) -> None:
        """A fault asked for in the header or the first request's prompt fails the
        submission itself (``only_key``: on those credentials only)."""
        requests = body.get("requests") if isinstance(body, dict) else None
        first = requests[0] if isinstance(requests, list) and requests else None
        params = first.get("params") if isinstance(first, dict) else None
        directives = parse_directives(
            request.headers.get("x-mock-fault"), params if isinstance(params, dict) else None
        )
        if directives.faults_apply(ex.api_key) and directives.status is not None:
            raise status_error(directives.status, directives.retry_after)

    @staticmethod
    def _json_body(ex: Exchange) -> Any:
        try:
            return json.loads(ex.body)
        except ValueError:
            raise invalid("There was an error parsing the body of your request") from None

    def _model_page(self, request: web.BaseRequest) -> dict[str, Any]:
        q = request.query
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            raise invalid("limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise invalid("limit: Input should be between 1 and 1000")
        items = list(self.models)
        ids = [m[0] for m in items]
        if "after_id" in q and "before_id" in q:
            raise invalid("Cannot specify both before_id and after_id")
        if "after_id" in q:
            if q["after_id"] not in ids:
                raise RequestError(404, "not_found_error", f"model: {q['after_id']}")
            rest = items[ids.index(q["after_id"]) + 1 :]
            page, has_more = rest[:limit], len(rest) > limit
        elif "before_id" in q:
            if q["before_id"] not in ids:
                raise RequestError(404, "not_found_error", f"model: {q['before_id']}")
            rest = items[: ids.index(q["before_id"])]
            page, has_more = rest[-limit:], len(rest) > limit
        else:
            page, has_more = items[:limit], len(items) > limit
        return {
            "data": [model_json(*m) for m in page],
            "has_more": has_more,
            "first_id": page[0][0] if page else None,
            "last_id": page[-1][0] if page else None,
        }

    async def _messages(
        self, request: web.BaseRequest, ex: Exchange, body: Any, directives: Directives
    ) -> web.StreamResponse:
        body = _validate_messages(body, _betas(request))
        answer = build_answer(body, directives)
        cache = self.prompt_cache(ex.api_key or "").usage(body)
        msg_id = new_id("msg_01", 22)
        if body.get("stream") is True:
            events = stream_events(msg_id, body["model"], answer, cache)
            return await self._stream(request, ex, events, directives)
        return await self._send_json(
            request, ex, 200, message_json(msg_id, body["model"], answer, cache)
        )

    async def _stream(
        self,
        request: web.BaseRequest,
        ex: Exchange,
        events: list[tuple[str, str]],
        directives: Directives,
    ) -> web.StreamResponse:
        headers = self._headers(ex)
        headers["content-type"] = "text/event-stream; charset=utf-8"
        headers["cache-control"] = "no-cache"
        resp = web.StreamResponse(status=200, headers=headers)
        ex.status = 200
        delay = directives.chunk_delay_ms / 1000
        try:
            await resp.prepare(request)
            for n, (name, data) in enumerate(events):
                if directives.drop_after is not None and n >= directives.drop_after:
                    ex.aborted = True
                    if request.transport is not None:
                        request.transport.close()  # flushes what was written, then FIN
                    return resp
                if directives.error_after is not None and n >= directives.error_after:
                    chunk = format_event("error", _STREAM_ERROR)
                    await resp.write(chunk)
                    ex.response_bytes += chunk
                    break
                if n and delay:
                    await asyncio.sleep(delay)
                chunk = format_event(name, data)
                await resp.write(chunk)
                ex.response_bytes += chunk
            await resp.write_eof()
        except ConnectionError:  # the client went away mid-stream
            ex.aborted = True
        return resp


async def serve(host: str, port: int, api_keys: list[str]) -> None:
    """Run a `MockUpstream` on host:port until cancelled."""
    async with MockUpstream(api_keys, host=host, port=port):
        await asyncio.Event().wait()
