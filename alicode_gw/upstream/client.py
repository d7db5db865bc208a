"""Calling the upstream Anthropic API: the attempt loop that retries on another
credential before anything reached the client.

A failure one customer's request met cools no shared credential by itself (see
:mod:`alicode_gw.upstream.pool`): the loop names the customer when it reports one, and
cools the credential after all when the same request then succeeded elsewhere.

Which headers cross in each direction is :mod:`alicode_gw.upstream.headers`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import aiohttp

from alicode_gw.errors import (
    OverloadedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from alicode_gw.state import RequestContext
from alicode_gw.upstream.credentials import Credential
from alicode_gw.upstream.headers import outbound_headers, passed_headers
from alicode_gw.upstream.outcome import Outcome, classify

# Largest error body read from an upstream failure (to classify it).
ERROR_BODY_LIMIT = 64 * 1024
REQUEST_CAUSED_MESSAGE = (
    "The upstream failed on every attempt of this request, though not on other"
    " customers' requests; the request itself may be the cause."
)


@dataclass(slots=True)
class Refusal:
    """An upstream 4xx that is the client's fault: passed through as received, except
    that its ``request_id`` is the gateway's (the one in the ``request-id`` header and
    the access log; the upstream's is in ``x-upstream-request-id``)."""

    status: int
    headers: dict[str, str]
    body: bytes


def rebrand_error(body: bytes, request_id: str) -> tuple[bytes, str | None]:
    """An upstream error body with the gateway's ``request_id`` in place of the
    upstream's, and the upstream's id. A body that is not a JSON object stays as is."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body, None
    if not isinstance(payload, dict):
        return body, None
    upstream_id = payload.get("request_id")
    payload["request_id"] = request_id
    rebranded = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return rebranded, upstream_id if isinstance(upstream_id, str) else None


def refusal(ctx: RequestContext, response: aiohttp.ClientResponse, body: bytes) -> Refusal:
    """The client's copy of an upstream client error (see :class:`Refusal`)."""
    body, body_id = rebrand_error(body, ctx.request_id)
    upstream_id = body_id or ctx.upstream_request_id
    headers = passed_headers(response.headers)
    if upstream_id:
        ctx.upstream_request_id = upstream_id
        headers["x-upstream-request-id"] = upstream_id
    return Refusal(response.status, headers, body)


@dataclass(slots=True)
class Attempts:
    """What the attempts of one request saw (for the final error and the logs)."""

    outcomes: list[Outcome] = field(default_factory=list)
    retry_after: list[float] = field(default_factory=list)
    # Credentials whose failure was left to this request's customer alone.
    alone: list[Credential] = field(default_factory=list)

    def exhausted(self) -> Exception:
        """The error the official API would give for these outcomes."""
        if self.outcomes and all(o is Outcome.RATE_LIMITED for o in self.outcomes):
            wait = max(1, round(min(self.retry_after))) if self.retry_after else 5
            return RateLimitError(
                "The upstream is rate limited on every available credential; retry later.",
                headers={"retry-after": str(wait)},
            )
        if Outcome.OVERLOADED in self.outcomes:
            return OverloadedError("Overloaded")
        if not self.outcomes:
            return ServiceUnavailableError("No healthy upstream credential is available.")
        if len(self.alone) == len(self.outcomes):
            return UpstreamError(REQUEST_CAUSED_MESSAGE)
        return UpstreamError("The upstream failed; retry the request.")


def customer_of(ctx: RequestContext) -> str | None:
    """Who a failure of this request is charged to in the pool: the account."""
    if ctx.account_id is not None:
        return f"account:{ctx.account_id}"
    if ctx.key_public_id is not None:
        return f"key:{ctx.key_public_id}"
    return None


async def _report(
    ctx: RequestContext,
    credential: Credential,
    outcome: Outcome,
    attempts: Attempts,
    cooldown: float | None = None,
) -> None:
    """Count the attempt (metrics), tell the pool how it went and note whether the
    failure was left to this request's customer."""
    ctx.state.metrics.upstream_attempt(credential.name, outcome.value)
    if outcome is not Outcome.OK and outcome is not Outcome.CLIENT_ERROR:
        attempts.outcomes.append(outcome)
        if cooldown is not None:
            attempts.retry_after.append(cooldown)
    alone = await ctx.state.keypool.report(credential, outcome, cooldown, customer=customer_of(ctx))
    if alone:
        attempts.alone.append(credential)


def body_read_timeout(response: aiohttp.ClientResponse, seconds: float | None) -> None:
    """The per-read timeout of an answer's connection: ``open_upstream`` waits for the
    headers under ``ALICODE_UPSTREAM_FIRST_BYTE_TIMEOUT``, then gives the body's reads
    the idle timeout (aiohttp would apply the first one to every read). None: no
    timeout, for a reader that keeps its own idle timer."""
    connection = response.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol.read_timeout = seconds
        connection.protocol.start_timeout()  # the timer running now, too


async def open_upstream(
    ctx: RequestContext, path: str, body: bytes
) -> tuple[aiohttp.ClientResponse, Credential] | Refusal:
    """POST ``body`` upstream, trying other credentials on retryable failures.

    Returns the open 2xx response (the caller relays and releases it) and the
    credential it came from, or a :class:`Refusal` to pass through. Raises the mapped
    error when every attempt failed. The credential of a 2xx stays counted in flight
    (``ctx.upstream_held``) until the root handler ends the request.
    """
    state = ctx.state
    config = state.config
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.upstream_retry_budget
    tried: set[int] = set()
    attempts = Attempts()
    url = config.upstream_url + path
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=config.upstream_connect_timeout,
        sock_read=config.upstream_first_byte_timeout,
    )
    if ctx.upstream_held is not None:  # a second upstream call of one request
        state.keypool.finished(ctx.upstream_held)
        ctx.upstream_held = None
    for number in range(config.upstream_max_attempts):
        if number and loop.time() > deadline:
            break
        try:
            credential = state.keypool.pick(frozenset(tried), ctx.affinity)
        except ServiceUnavailableError:
            if number == 0:
                raise
            break
        tried.add(credential.id)
        ctx.attempts += 1
        ctx.upstream_name = credential.name
        state.keypool.started(credential)
        held = False  # a 2xx's call lasts until the request ends (app.py releases it)
        try:
            try:
                response = await state.http.post(
                    url,
                    data=body,
                    headers=outbound_headers(ctx.request.headers, credential),
                    timeout=timeout,
                    allow_redirects=False,  # a 3xx is a failed attempt (never followed)
                )
            except (aiohttp.ClientError, TimeoutError):
                await _report(ctx, credential, Outcome.CONNECT_ERROR, attempts)
                continue
            ctx.upstream_request_id = response.headers.get("request-id")
            state.keypool.observe_limits(credential, response.headers)
            if response.status < 300:
                ctx.upstream_held, held = credential, True
                await _report(ctx, credential, Outcome.OK, attempts)
                for failed in attempts.alone:  # the request was fine: those were not
                    await state.keypool.confirm(failed)
                body_read_timeout(response, config.upstream_idle_timeout)
                return response, credential
            try:
                error_body = await response.content.read(ERROR_BODY_LIMIT)
            except (aiohttp.ClientError, TimeoutError):
                error_body = b""
            finally:
                response.release()
            outcome, cooldown = classify(response.status, response.headers, error_body)
            await _report(ctx, credential, outcome, attempts, cooldown)
            if outcome is Outcome.CLIENT_ERROR:  # the report freed a half-open probe
                return refusal(ctx, response, error_body)
        finally:
            if not held:
                state.keypool.finished(credential)
    raise attempts.exhausted()
