"""Per-IP and per-key limits, enforced across nodes in Redis by atomic Lua scripts.

:meth:`Limiter.admit` is ONE script call (EVALSHA, reloaded on NOSCRIPT) that
checks, in this order, the IP's requests per minute and concurrency, then the key's
requests per minute, concurrency and rolling token budget, and takes the slots only
if every check passes, so limits hold exactly however many nodes admit at once. A limit
this node already holds a share of (:mod:`~alicode_gw.limits.shares`: capacity Redis
counted for it before) is taken from that share instead, and an admission whose every
limit is covered so makes no call at all.

- Requests per minute: a sliding 60-second log (sorted set of admission tokens scored
  by Redis time). Exact; no burst at a window boundary.
- Concurrency: leases in a sorted set scored by their expiry (``lease_seconds``).
  Expired leases are dropped before counting, so a crashed node's slots free
  themselves. Each node renews its own live leases in one call every
  ``refresh_interval`` seconds (:meth:`Limiter.refresh_loop`, a perpetual task), so a
  10-minute stream keeps its slot without the relay doing anything.
- Token budget: per-minute buckets (hash) indexed by a sorted set plus a running
  total; buckets leave the total once they are older than the 5-hour window, so the
  window rolls with one-minute granularity. An admission reserves the request's worst
  case (``reserve_tokens``: estimated input + max_tokens) in a sorted set of leases
  like a concurrency slot's (renewed while the request runs, expired if its node dies);
  the budget admits while the counted tokens plus these reservations are under it, and
  the finish replaces the reservation with the tokens used, in one script call. So a
  key's concurrent requests exceed its budget by at most one request's worst case.

The script calls of concurrent requests (every admit and finish of this process) travel
together: a :class:`~alicode_gw.store.batching.Coalescer` sends whatever queued up during the
previous round trip as one pipeline, in submission order, so under load the client-side
cost of a call (the dominant one in redis-py) is shared by many requests, and a lone
request still goes out at once.

All clocks are Redis's (``TIME``), so node clocks do not matter. If Redis cannot be
reached, admission fails closed with a 503 (``ServiceUnavailableError``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import secrets
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from alicode_gw.errors import RateLimitError, ServiceUnavailableError
from alicode_gw.identity.auth import ApiKey
from alicode_gw.limits.lua import ADMIT_LUA, FINISH_LUA, REFRESH_LUA, STATUS_LUA
from alicode_gw.limits.refusals import rejection
from alicode_gw.limits.resp import ScriptCall, ScriptPipe
from alicode_gw.limits.shares import RESERVE_SECONDS, Shares
from alicode_gw.store.batching import Closed, Coalescer
from alicode_gw.store.unavailable import REDIS_FAILED, unavailable
from alicode_gw.tasks import TaskTracker, nothing

log = logging.getLogger(__name__)

RPM_WINDOW_MS = 60_000
BUDGET_WINDOW_MS = 5 * 3600 * 1000
BUCKET_MS = 60_000
RESERVE_MS = int(RESERVE_SECONDS * 1000)
SHARE_TICK = 1.0  # seconds between two looks for unused shares to give back
# A finish (a slot to release, tokens to count) waits up to this long to share another
# call's round trip; the same key's next admit carries it along in order anyway.
FINISH_LINGER = 0.05
UNAVAILABLE_MESSAGE = (
    "Rate limiting is temporarily unavailable (limit store unreachable); retry shortly."
)


@dataclass(slots=True, eq=False)
class Slot:
    """A concurrency slot an admitted request holds."""

    set_key: str
    member: str
    limit: int
    shared: bool  # may be kept in this node's share when the request ends
    confirmed: float  # when Redis last confirmed its lease (monotonic, before the call)


@dataclass(slots=True, eq=False)
class Admission:
    """Slots taken by one admitted request; give it back to :meth:`Limiter.finish`."""

    token: str
    slots: tuple[Slot, ...]
    budget_keys: tuple[str, str, str]
    headers: dict[str, str] = field(default_factory=dict)
    finished: bool = False


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """A key's live counters, for ``GET /v1/key-status``."""

    requests_last_minute: int
    in_flight: int
    used_tokens: int
    oldest_expires_in: float | None  # seconds until the oldest counted usage leaves
    budget_resets_in: float | None  # seconds until an exhausted budget admits again


class _Refused(Exception):
    """Redis refused an admission on the limit at ``index`` (0-3: IP per minute, IP
    concurrency, key per minute, key concurrency; 4: the key's budget)."""

    def __init__(self, index: int, error: RateLimitError) -> None:
        super().__init__(error.message)
        self.index = index
        self.error = error


# (index of the limit in an admission, its granted count, left, reset) in ADMIT's reply
_GRANTS = ((0, 4, 6, 7), (2, 5, 1, 2))

# (Redis set, limit, may come from this node's share): IP per minute, IP concurrency,
# key per minute, key concurrency
Limits = tuple[tuple[str, int, bool], ...]


@dataclass(slots=True, eq=False)
class _Attempt:
    """One try at admitting a request: what came from the share, what Redis checks."""

    limits: Limits
    token: str
    now: float  # monotonic, before anything was asked of Redis
    sent: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # 0: not asked of Redis
    entries: list[tuple[str, str, float]] = field(default_factory=list)  # from the share
    slots: list[Slot] = field(default_factory=list)


class Limiter:
    """Cluster-wide limits in Redis (``state.limiter``); see the module docstring."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        ip_rpm: int,
        ip_concurrency: int,
        share_pct: int = 25,
        lease_seconds: float = 30.0,
        refresh_interval: float = 10.0,
        budget_window_seconds: int = BUDGET_WINDOW_MS // 1000,
        bucket_seconds: int = BUCKET_MS // 1000,
        tasks: TaskTracker | None = None,
    ) -> None:
        """``share_pct``: how much of a limit one node may hold as its share
        (:mod:`~alicode_gw.limits.shares`); 0 sends every admission to Redis. ``tasks``
        tracks the pipeline flushes (the app passes its own tracker, so shutdown
        drains them)."""
        self._redis = redis
        self._prefix = prefix + "rl:"
        self.ip_rpm = ip_rpm
        self.ip_concurrency = ip_concurrency
        self.lease_ms = int(lease_seconds * 1000)
        self.refresh_interval = refresh_interval
        self.budget_window_ms = budget_window_seconds * 1000
        self.bucket_ms = bucket_seconds * 1000
        self._admit = redis.register_script(ADMIT_LUA)
        self._finish = redis.register_script(FINISH_LUA)
        self._refresh = redis.register_script(REFRESH_LUA)
        self._status = redis.register_script(STATUS_LUA)
        self._active: dict[str, Admission] = {}
        self._shares = Shares(share_pct, lease_seconds)
        # Admission tokens (members of the Redis sets): unique to this process, and
        # across processes by the random prefix; nothing about them needs to be secret.
        self._node = secrets.token_hex(6) + "-"
        self._serial = itertools.count()
        self._pipe = ScriptPipe(redis)
        # Token-only finish calls still queued, by the key's budget keys: their count
        # (args[0]) takes in the tokens of later finishes of the same key (a call whose
        # future is done without being sent, at shutdown, takes none).
        self._queued_tokens: dict[tuple[str, ...], tuple[list[Any], asyncio.Future[Any]]] = {}
        self._calls: Coalescer[ScriptCall, Any] = Coalescer(
            self._send,
            tasks if tasks is not None else TaskTracker(),
            name="limits-pipeline",
            max_in_flight=2,  # one connection, replies in order: batches may overlap
            linger=FINISH_LINGER,
        )
        self.local_admissions = 0  # admitted from this node's shares alone

    async def _call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script call, sent in the next pipeline; raises its own error."""
        return await self._calls.submit(ScriptCall(script, keys, args))

    def _ip_keys(self, ip: str) -> tuple[str, str]:
        return f"{self._prefix}ip:{ip}:rpm", f"{self._prefix}ip:{ip}:conc"

    def _key_keys(self, key_id: int) -> tuple[str, str, str, str, str]:
        base = f"{self._prefix}key:{key_id}:"
        return base + "rpm", base + "conc", base + "budget:h", base + "budget:z", base + "budget:t"

    def _reservations_key(self, key_id: int) -> str:
        return f"{self._prefix}key:{key_id}:budget:r"

    def close(self) -> None:
        """Close the limiter's own Redis connection (admits after this reconnect)."""
        self._pipe.connection.close()

    @property
    def round_trips(self) -> int:
        """Pipelines sent for admits and finishes so far."""
        return self._calls.flushes

    @property
    def in_flight(self) -> int:
        """Admissions of this process not finished yet."""
        return len(self._active)

    async def admit(self, ip: str, key: ApiKey, reserve_tokens: int = 0) -> Admission:
        """Take a slot for one request of ``key`` from ``ip`` or raise
        :class:`RateLimitError` (429) / :class:`ServiceUnavailableError` (503): from
        this node's shares when they cover every limit, else one round trip (which
        may also reserve the node's next share). ``reserve_tokens``: the request's worst
        case, reserved against the key's token budget until :meth:`finish` (a key with
        a budget is always admitted in Redis). Models are not limited here: the caller
        checks the key's allow-list (403) before."""
        ip_rpm_key, ip_conc_key = self._ip_keys(ip)
        key_rpm, key_conc, bud_h, bud_z, bud_t = self._key_keys(key.id)
        shared = not key.budget_tokens  # a budget is checked in Redis at every admission
        limits = (
            (ip_rpm_key, self.ip_rpm, True),
            (ip_conc_key, self.ip_concurrency, True),
            (key_rpm, key.rpm_limit or 0, shared),
            (key_conc, key.concurrency_limit or 0, shared),
        )
        reserve = max(0, reserve_tokens) if key.budget_tokens else 0
        try:
            return await self._admit_once(key, limits, (bud_h, bud_z, bud_t), reserve)
        except _Refused as refused:
            if refused.index > 3 or not await self._room_of_own(limits[refused.index]):
                raise refused.error from None
        try:  # once more
            return await self._admit_once(key, limits, (bud_h, bud_z, bud_t), reserve)
        except _Refused as again:
            raise again.error from None

    async def _room_of_own(self, limit: tuple[str, int, bool]) -> bool:
        """After ``limit`` refused a request: whether this node's own share explains it,
        so that trying again is not over the limit. Either a reply received meanwhile
        gave the node a share of it, or the node still holds some of it that has
        lapsed (given back now, instead of at the next tick)."""
        set_key = limit[0]
        stale = self._shares.stale(set_key, time.monotonic())
        if stale:
            try:
                await self._remove(stale, urgent=True)
            except (*REDIS_FAILED, Closed):
                return False
            return True
        return limit[2] and self._shares.holds(set_key, time.monotonic())

    async def _admit_once(
        self, key: ApiKey, limits: Limits, budget_keys: tuple[str, str, str], reserve: int
    ) -> Admission:
        shares = self._shares
        attempt = _Attempt(limits, f"{self._node}{next(self._serial):x}", time.monotonic())
        for i, (set_key, limit, shared) in enumerate(limits):
            if limit <= 0:
                continue
            if shared and shares.pct:
                if i % 2 == 0:
                    entry = shares.take_entry(set_key, attempt.now)
                    if entry is not None:
                        attempt.entries.append((set_key, *entry))
                        continue
                else:
                    kept = shares.take_slot(set_key, limit, attempt.now)
                    if kept is not None:
                        attempt.slots.append(Slot(set_key, kept[0], limit, True, kept[1]))
                        continue
            attempt.sent[i] = limit
        result: Sequence[Any] | None = None
        if any(attempt.sent) or key.budget_tokens:
            result = await self._admit_in_redis(attempt, key, budget_keys, reserve)
        else:
            self.local_admissions += 1
        headers = {}
        key_rpm, rpm_limit, shared = limits[2]
        if rpm_limit:
            if shared and shares.pct:
                remaining, reset_ms = shares.view(key_rpm)
            else:
                assert result is not None  # the key's minute log was checked in Redis
                remaining, reset_ms = int(result[1]), int(result[2])
            headers = {
                "X-RateLimit-Limit": str(rpm_limit),
                "X-RateLimit-Remaining": str(max(0, remaining)),
                "X-RateLimit-Reset": str(math.ceil(reset_ms / 1000)),
            }
        admission = Admission(attempt.token, tuple(attempt.slots), budget_keys, headers)
        self._active[attempt.token] = admission
        return admission

    async def _admit_in_redis(
        self, attempt: _Attempt, key: ApiKey, budget_keys: tuple[str, str, str], reserve: int
    ) -> Sequence[Any]:
        """The round trip for the limits the share did not cover (what came from the
        share is given back if the admission fails); adds the slots it took (and the
        budget reservation of ``reserve`` tokens, a slot of the reservations set) to
        the attempt and records the share it reserved."""
        reservations = self._reservations_key(key.id)
        reservation = f"{attempt.token}:{reserve}" if reserve else ""
        shares, limits, sent, now = self._shares, attempt.limits, attempt.sent, attempt.now
        grants = [shares.ask(limits[i][0], now) if sent[i] and limits[i][2] else 0 for i in (0, 2)]
        asks = [limits[i][0] if grant else "" for i, grant in zip((0, 2), grants, strict=True)]
        used = {log_key: member for log_key, member, _ in attempt.entries}  # counted now
        future = self._calls.submit(
            ScriptCall(
                self._admit,
                [*(set_key for set_key, _, _ in limits), *budget_keys, reservations],
                [
                    attempt.token,
                    *sent,
                    key.budget_tokens or 0,
                    self.lease_ms,
                    RPM_WINDOW_MS,
                    self.budget_window_ms,
                    self.bucket_ms,
                    shares.pct,
                    grants[0],
                    grants[1],
                    RESERVE_MS,
                    used.get(limits[0][0], ""),
                    used.get(limits[2][0], ""),
                    reservation,
                ],
            )
        )
        try:
            result = await asyncio.shield(future)
        except BaseException as exc:
            # Redis may have run the call (and counted the entries from the share as
            # used now): they go back to Redis, not to the share.
            self._give_back(attempt, entries_counted=True)
            if isinstance(exc, REDIS_FAILED):
                self._asked(asks)
                raise ServiceUnavailableError(UNAVAILABLE_MESSAGE) from exc
            # The caller went away (maybe with the reply already in): what Redis did
            # for it is taken care of when the reply is in.
            late = functools.partial(
                self._admitted_late,
                attempt=attempt,
                asks=asks,
                reserved=(reservations, reservation),
            )
            future.add_done_callback(late)
            raise
        self._asked(asks)
        if int(result[0]) != 1:
            self._give_back(attempt)
            raise _Refused(*rejection(result))
        self._record_grants(result, attempt)
        for i in (1, 3):
            if sent[i]:
                set_key, limit, shared = limits[i]
                attempt.slots.append(Slot(set_key, attempt.token, limit, shared, now))
        if reservation:  # released by the finish, renewed like a slot meanwhile
            attempt.slots.append(Slot(reservations, reservation, 0, False, now))
        return result

    def _record_grants(self, result: Sequence[Any], attempt: _Attempt) -> None:
        """Put the entries an admission reserved for this node in its share."""
        if not self._shares.pct:
            return
        deadline = attempt.now + RESERVE_SECONDS  # `now` is older than the reservation
        for i, got, left, reset in _GRANTS:
            log_key, _, shared = attempt.limits[i]
            if attempt.sent[i] and shared:
                members = [f"{attempt.token}:{n}" for n in range(1, int(result[got]) + 1)]
                reply = int(result[left]), int(result[reset])
                self._shares.reserved(log_key, members, deadline, reply, attempt.now)

    def _asked(self, asks: list[str]) -> None:
        for log_key in asks:
            if log_key:
                self._shares.asked(log_key)

    def _admitted_late(
        self,
        future: asyncio.Future[Any],
        *,
        attempt: _Attempt,
        asks: list[str],
        reserved: tuple[str, str],
    ) -> None:
        """The reply to an admission whose request went away while it was under way:
        what it reserved joins the share, the slots (and budget reservation) it took
        go back."""
        self._asked(asks)
        if future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        if int(result[0]) != 1:
            return
        self._record_grants(result, attempt)
        for i in (1, 3):
            if attempt.sent[i]:
                self._shares.lapse(attempt.limits[i][0], attempt.token)
        if reserved[1]:
            self._shares.lapse(*reserved)

    def _give_back(self, attempt: _Attempt, *, entries_counted: bool = False) -> None:
        """Return to the share what a failed attempt had taken from it; entries Redis
        may have counted as used are removed from Redis instead."""
        for log_key, member, deadline in attempt.entries:
            if entries_counted:
                self._shares.lapse(log_key, member)
            else:
                self._shares.put_entry(log_key, member, deadline)
        for slot in attempt.slots:
            kept = (slot.member, slot.confirmed)
            if not self._shares.keep_slot(slot.set_key, slot.limit, kept, attempt.now, force=True):
                self._shares.lapse(slot.set_key, slot.member)

    async def add_tokens(self, key_id: int, tokens: int) -> None:
        """Count ``tokens`` a key used outside a request's admission (a settled message
        batch) against its rolling budget. Never raises (as :meth:`finish`)."""
        _, _, hours, index, total = self._key_keys(key_id)
        admission = Admission(token="", slots=(), budget_keys=(hours, index, total))
        await self.finish(admission, tokens)

    async def finish(self, admission: Admission, tokens_used: int) -> None:
        """Release the slots and add ``tokens_used`` to the key's rolling budget (one
        script call, or none). Never raises: if Redis is unreachable the leases expire
        on their own and the tokens are not counted (logged)."""
        await self.finish_later(admission, tokens_used, urgent=True)

    def finish_later(
        self, admission: Admission, tokens_used: int, *, urgent: bool = False
    ) -> Coroutine[Any, Any, None]:
        """Queue the finish now (it reaches Redis before anything this process queues
        after it, e.g. the same key's next admit) and return what awaits it. Not urgent:
        it may wait a moment to share another request's round trip, and tokens of a
        key whose tokens are already queued join that call. A slot the node's share
        keeps for the next request needs no call at all."""
        if admission.finished:
            return nothing()
        admission.finished = True
        self._active.pop(admission.token, None)
        now = time.monotonic()
        keys, args = list(admission.budget_keys), [max(0, tokens_used), *self._windows]
        for slot in admission.slots:
            kept = (slot.member, slot.confirmed)
            if slot.shared and self._shares.keep_slot(slot.set_key, slot.limit, kept, now):
                continue
            keys.append(slot.set_key)
            args.append(slot.member)
        if len(keys) == len(admission.budget_keys):  # tokens to count, nothing else
            if tokens_used <= 0:
                return nothing()
            queued = self._queued_tokens.get(admission.budget_keys)
            if queued is not None and not urgent and not queued[1].done():
                queued[0][0] += tokens_used  # not sent yet: see _send
                return nothing()
        future = self._calls.submit(ScriptCall(self._finish, keys, args), urgent=urgent)
        if len(keys) == len(admission.budget_keys) and not urgent:
            self._queued_tokens[admission.budget_keys] = (args, future)
        return self._finished(future, args)

    async def _send(self, calls: list[ScriptCall]) -> list[Any]:
        """The Coalescer's flush: a batch leaves, so the token counts queued in it take
        no more additions (a later finish of the same key queues a call of its own)."""
        queued = self._queued_tokens
        for call in calls:
            if call.script is self._finish:
                budget_keys = tuple(call.keys[:3])
                if budget_keys in queued and queued[budget_keys][0] is call.args:
                    del queued[budget_keys]
        return await self._pipe.run(calls)

    @property
    def _windows(self) -> tuple[int, int]:
        return self.budget_window_ms, self.bucket_ms

    async def _finished(self, future: asyncio.Future[Any], args: list[Any]) -> None:
        try:
            await future
        except (*REDIS_FAILED, Closed) as exc:
            log.warning(
                "could not release limits (%s); leases expire in %d s, %d token(s) uncounted",
                type(exc).__name__,
                self.lease_ms // 1000,
                args[0],  # with those of the finishes that joined this call
            )

    async def _remove(self, members: list[tuple[str, str]], *, urgent: bool) -> None:
        """Remove (set, member) pairs from Redis: unused shares going back."""
        none = self._prefix + "unused"  # budget keys of a call that adds no tokens
        for start in range(0, len(members), 256):
            chunk = members[start : start + 256]
            await self._calls.submit(
                ScriptCall(
                    self._finish,
                    [none, none, none, *(k for k, _ in chunk)],
                    [0, *self._windows, *(m for _, m in chunk)],
                ),
                urgent=urgent,
            )

    async def give_back_unused(self, at: float | None = None) -> int:
        """Give back to Redis the share this node no longer needs (reserved entries
        past their deadline, slots kept too long) as of ``at`` (default now, monotonic
        clock); returns how many."""
        members = self._shares.expired(time.monotonic() if at is None else at)
        await self._remove(members, urgent=False)
        return len(members)

    async def close_shares(self) -> None:
        """Give back everything this node holds in reserve (shutdown, after the drain).
        Never raises: what is not given back expires on its own within a minute."""
        try:
            await self._remove(self._shares.everything(), urgent=True)
        except (*REDIS_FAILED, Closed) as exc:
            log.warning("could not give back limit shares (%s)", type(exc).__name__)

    async def refresh(self, admission: Admission | None = None) -> int:
        """Renew the leases of ``admission`` (default: every live admission of this
        process and every slot its share keeps); returns how many were renewed. A slot
        Redis no longer had (its lease lapsed while Redis could not be reached, or
        Redis lost it) is not kept for another request. :meth:`refresh_loop` calls it."""
        admissions = [admission] if admission is not None else list(self._active.values())
        live = [slot for a in admissions if not a.finished for slot in a.slots]
        pairs = [(slot.set_key, slot.member) for slot in live]
        if admission is None:
            pairs += self._shares.kept_slots()
        at = time.monotonic()
        found: dict[tuple[str, str], bool] = {}
        for start in range(0, len(pairs), 256):
            chunk = pairs[start : start + 256]
            flags = await self._refresh(
                keys=[k for k, _ in chunk], args=[self.lease_ms, *(m for _, m in chunk)]
            )
            found.update(zip(chunk, (bool(int(f)) for f in flags), strict=True))
        for slot in live:
            slot.confirmed = at if found.get((slot.set_key, slot.member)) else -math.inf
        self._shares.confirmed(found, at)
        return sum(found.values())

    async def refresh_loop(self) -> None:
        """Perpetual task: give back unused shares (every second) and keep this node's
        leases alive while their requests run (every ``refresh_interval``)."""
        tick = min(self.refresh_interval, SHARE_TICK)
        renew_at = time.monotonic() + self.refresh_interval
        while True:
            await asyncio.sleep(tick)
            try:
                await self.give_back_unused()
            except (*REDIS_FAILED, Closed) as exc:
                log.warning("could not give back limit shares (%s)", type(exc).__name__)
            if time.monotonic() >= renew_at:
                renew_at = time.monotonic() + self.refresh_interval
                try:
                    await self.refresh()
                except (*REDIS_FAILED, Closed) as exc:
                    log.warning("could not renew concurrency leases (%s)", type(exc).__name__)

    async def usage(self, key: ApiKey) -> KeyUsage:
        """The key's live counters (one round trip); 503 if Redis is unreachable. What
        this node holds in reserve for the key is not counted as used."""
        key_rpm, key_conc, bud_h, bud_z, bud_t = self._key_keys(key.id)
        with unavailable(UNAVAILABLE_MESSAGE, REDIS_FAILED):
            # Through the pipeline: finishes of this node still waiting go first.
            result = await self._call(
                self._status,
                [key_rpm, key_conc, bud_h, bud_z, bud_t],
                [RPM_WINDOW_MS, self.budget_window_ms, self.bucket_ms, key.budget_tokens or 0],
            )
        recent, flying, used, first, reset, now = (int(v) for v in result)
        return KeyUsage(
            requests_last_minute=max(0, recent - self._shares.unused(key_rpm)),
            in_flight=max(0, flying - self._shares.unused(key_conc)),
            used_tokens=used,
            oldest_expires_in=(first - now) / 1000 if first else None,
            budget_resets_in=(reset - now) / 1000 if reset else None,
        )
