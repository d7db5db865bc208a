"""The batch loop: polls each open batch upstream with back-off and, when the upstream
says it ended, reads its results once (only to sum the succeeded requests' usage: no
content is kept) and settles it (``billing.batch_settle``: once, whatever the number of
processes polling).

Every gateway process and the ``worker`` process run it. A poll claims its batches in
SQL (``billing.batch_claim``: ``FOR UPDATE SKIP LOCKED``, then the next poll time pushed
back by :data:`CLAIM_LEASE`), so two processes do not poll the same batch at once; and
should they both read an ended batch (a claim lapsed during a very long results read),
the settlement's row lock and status make the second an ``already_settled``. A batch
claimed by a process that died is polled again once its claim lapses, so a restart
loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from alicode_gw.batches import owner, store
from alicode_gw.batches.objects import Batch
from alicode_gw.config import Config
from alicode_gw.errors import UpstreamError
from alicode_gw.identity.auth import announce_revoked
from alicode_gw.limits.limiter import Limiter
from alicode_gw.money.contract import Usage
from alicode_gw.upstream.relay import usage_from_message

log = logging.getLogger(__name__)

CLAIM_LEASE = 60.0  # seconds a claimed batch is left to its poller
CLAIM_LIMIT = 20  # batches one round claims
# A batch still `submitting` this long after its creation was never recorded as
# accepted (its process died mid-submission): it ends, every request errored, unbilled.
SUBMIT_GRACE = timedelta(minutes=15)
READ_CHUNK = 64 * 1024
GONE: dict[str, Any] = {}  # the upstream answered 404: it has no such batch

TokensCallback = Callable[[int, int], Awaitable[None]]  # (key id, tokens)
RevokedCallback = Callable[[str], Awaitable[None]]  # (public id of a key at its cap)


def next_interval(polls: int, base: float, cap: float) -> float:
    """Back-off between polls of one batch: ``base`` growing by half each poll, to ``cap``."""
    return min(base * 1.5 ** min(polls, 40), cap)


def add_usage(total: Usage, more: Usage) -> Usage:
    return Usage(**{k: v + more.counts()[k] for k, v in total.counts().items()})


def usage_tokens(usage: Usage) -> int:
    return sum(usage.counts().values())


def line_usage(line: bytes, batch: Batch) -> tuple[str, Usage] | None:
    """(priced model, usage) of one results line of a succeeded request; None otherwise."""
    try:
        item = json.loads(line)
    except ValueError:
        return None
    if not isinstance(item, dict):
        return None
    result = item.get("result")
    if not isinstance(result, dict) or result.get("type") != "succeeded":
        return None
    message = result.get("message")
    if not isinstance(message, dict):
        return None
    custom_id = item.get("custom_id")
    model = batch.request_models.get(custom_id) if isinstance(custom_id, str) else None
    if model is None:  # not a custom_id of this batch: priced as its first request
        model = next(iter(batch.request_models.values()))
    return model, usage_from_message(message)


class BatchPoller:
    """One process's batch loop (see the module docstring)."""

    def __init__(
        self,
        upstream: owner.Upstream,
        *,
        interval: float,
        max_interval: float,
        on_tokens: TokensCallback | None = None,
        on_revoked: RevokedCallback | None = None,
    ) -> None:
        self.upstream = upstream
        self.interval = interval
        self.max_interval = max(max_interval, interval)
        self._on_tokens = on_tokens
        self._on_revoked = on_revoked

    async def run(self) -> None:
        """Poll due batches until cancelled."""
        while True:
            try:
                claimed = await self.poll_due()
            except Exception:
                log.exception("batch poll round failed")
                claimed = 0
            if claimed < CLAIM_LIMIT:
                await asyncio.sleep(self.interval)

    async def poll_due(self) -> int:
        batches = await store.claim_due(
            self.upstream.db, limit=CLAIM_LIMIT, lease_seconds=CLAIM_LEASE
        )
        for batch in batches:
            try:
                await self.poll(batch)
            except Exception:
                log.exception("polling batch %s failed", batch.id)
                await self._later(batch)
        return len(batches)

    async def _later(
        self, batch: Batch, *, canceling: bool = False, counts: store.Counts | None = None
    ) -> None:
        seconds = next_interval(batch.polls, self.interval, self.max_interval)
        await store.schedule(
            self.upstream.db, batch.id, in_seconds=seconds, canceling=canceling, counts=counts
        )

    async def poll(self, batch: Batch) -> str:
        """Look at one batch upstream; settle it if it ended. Returns what happened:
        ``waiting``, ``released``, ``unreachable`` or the settlement's outcome."""
        db = self.upstream.db
        if batch.status == "submitting":
            age = datetime.now(UTC) - batch.created_at
            if age > SUBMIT_GRACE:
                log.warning("batch %s was never recorded as submitted: released", batch.id)
                await store.release(db, batch.id)
                return "released"
            left = (SUBMIT_GRACE - age).total_seconds()
            await store.recheck_submitting(db, batch.id, in_seconds=max(left, self.interval))
            return "waiting"
        state = await self._upstream_state(batch)
        if state is GONE:
            log.warning("batch %s is gone upstream: ended unbilled", batch.id)
            await store.release(db, batch.id)
            return "released"
        if state is None:
            await self._later(batch)
            return "unreachable"
        status = state.get("processing_status")
        counts = _counts(state.get("request_counts"))
        if status != "ended":
            await self._later(batch, canceling=status == "canceling", counts=counts)
            return "waiting"
        usage = await self._results_usage(batch)
        if usage is None:
            await self._later(batch)
            return "unreachable"
        settled = await store.settle(
            db, batch.id, usage=usage, counts=counts, ended_at=_timestamp(state.get("ended_at"))
        )
        if settled.outcome == "settled":
            tokens = sum(usage_tokens(u) for u in usage.values())
            if self._on_tokens is not None and tokens:
                await self._on_tokens(batch.key_id, tokens)
            if self._on_revoked is not None and settled.revoked_public_id:
                await self._on_revoked(settled.revoked_public_id)
        return settled.outcome

    async def _upstream_state(self, batch: Batch) -> dict[str, Any] | None:
        """The upstream's batch object; :data:`GONE` when the upstream says it has no
        such batch (its results can never be read); None when it could not be read now."""
        try:
            response = await owner.call(self.upstream, batch, "GET")
        except UpstreamError as err:
            log.warning("batch %s: %s", batch.id, err.message)
            return None
        try:
            body = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            return None
        finally:
            response.release()
        if response.status == 404 and api_not_found(body):
            return GONE
        if response.status != 200:
            log.warning("batch %s: upstream answered %d to a poll", batch.id, response.status)
            return None
        try:
            state = json.loads(body)
        except ValueError:
            return None
        return state if isinstance(state, dict) else None

    async def _results_usage(self, batch: Batch) -> dict[str, Usage] | None:
        """The succeeded requests' usage by priced model, read from the upstream's
        results once (streamed line by line; nothing kept but the sums)."""
        try:
            response = await owner.call(self.upstream, batch, "GET", "/results")
        except UpstreamError:
            return None
        totals: dict[str, Usage] = {}

        def take(line: bytes) -> None:
            found = line_usage(line, batch) if line.strip() else None
            if found is not None:
                model, usage = found
                totals[model] = add_usage(totals.get(model, Usage()), usage)

        try:
            if response.status != 200:
                log.warning("batch %s: upstream answered %d to results", batch.id, response.status)
                return None
            pending = b""
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    take(line)
            take(pending)
        except (aiohttp.ClientError, TimeoutError):
            return None
        finally:
            response.release()
        return totals


def api_not_found(body: bytes) -> bool:
    """Is this 404 the API's own ``not_found_error`` (the batch is gone), rather than a
    proxy's or a wrong URL's page (a failed poll)?"""
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    error = answer.get("error") if isinstance(answer, dict) else None
    return isinstance(error, dict) and error.get("type") == "not_found_error"


def _count(counts: Any, name: str) -> int:
    value = counts.get(name) if isinstance(counts, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _counts(counts: Any) -> store.Counts:
    """The upstream's ``request_counts`` (a missing or odd count is 0)."""
    return store.Counts(
        succeeded=_count(counts, "succeeded"),
        errored=_count(counts, "errored"),
        canceled=_count(counts, "canceled"),
        expired=_count(counts, "expired"),
    )


def _timestamp(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


FALLBACK_INTERVAL = 5.0  # the worker's loop when the gateways' is off (interval 0)


def build_poller(
    config: Config, db: asyncpg.Pool, http: aiohttp.ClientSession, redis: Redis, limiter: Limiter
) -> BatchPoller:
    """The process's batch loop: settled tokens go to ``limiter`` (the key's budget), a
    key a settlement revoked is announced to every node."""

    async def revoked(public_id: str) -> None:
        await announce_revoked(redis, config.redis_prefix, [public_id])

    upstream = owner.Upstream(
        db,
        http,
        config.upstream_url,
        config.upstream_connect_timeout,
        config.upstream_first_byte_timeout,
    )
    return BatchPoller(
        upstream,
        interval=config.batch_poll_interval or FALLBACK_INTERVAL,
        max_interval=config.batch_poll_max_interval,
        on_tokens=limiter.add_tokens,
        on_revoked=revoked,
    )
