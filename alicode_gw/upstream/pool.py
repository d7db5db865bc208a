"""The upstream credential pool: which operator key the next request uses.

Credentials live in PostgreSQL (``upstream_credentials``); their health is shared by
every node through Redis, under ``{prefix}upstream:``:

``cool:{id}``   exists while the credential cools down (TTL = the cooldown)
``trip:{id}``   consecutive-failure count; exists until a request succeeds after the
                cooldown (the half-open probe), which deletes it
``probe:{id}``  SET NX lock naming the one node allowed to send the probe request
``blame:{id}``  sorted set of the customers (accounts) that got a failure from the
                credential lately, scored by Redis's clock (see below)
``events``      pub/sub channel: ``cool``/``ok``/``disable`` from :meth:`KeyPool.report`,
                ``reload`` from the CLI, so other nodes update their view at once

Which healthy credential a request gets: with an affinity key (a conversation's
cacheable prefix), the first usable one in the key's rendezvous order over cache groups
(:mod:`alicode_gw.upstream.affinity`, docs/routing.md), passing over credentials at
their in-flight cap or near their own upstream rate limit; without one, smooth
weighted round-robin.

:meth:`KeyPool.pick` is synchronous and does no I/O: it reads the in-process view that
:meth:`KeyPool.report`, the pub/sub listener and a refresh loop (one pipelined Redis
read per second, the table every few seconds) keep current. When a cooldown expires
the refresh loop wakes, and the node that wins ``probe:{id}`` lets exactly one request
through; its outcome decides (OK: healthy again; failure: a longer cooldown).

One customer's failures cool nothing shared. A 5xx can be the request's own doing (a
request shape the upstream chokes on); cooling on it would let one customer, repeating
that request, take the credentials away from everyone. So a failure (529, other 5xx,
connect error or timeout) cools the credential only when it is not one customer's alone:

* at least ``blame_quorum`` (2) distinct customers (accounts: one customer's several
  keys count once) got such a failure from it within
  ``blame_window`` (10 s): the failure script adds the customer to ``blame:{id}``,
  drops entries older than the window and counts them, atomically in Redis, so the
  rule holds across nodes and costs nothing on success; or
* the same request then succeeded on another credential (:meth:`KeyPool.confirm`):
  the request was fine, so the credential was at fault.

Otherwise only the customer whose request failed sees it (the attempt loop says so in
its 502) and the credential stays in the pool, half-open probe included. 429, 401 and
billing errors are facts about the credential and act at once. Why not a per-key
circuit breaker: each key's first failures would still cool the shared credentials
(and a key can wait out its breaker and start again), "consecutive" failures need a
Redis write on every success, and a key's own rate limits already bound the load its
failures cause. The price: while only one customer is active, a real outage cools
nothing (each request tries up to ``ALICODE_UPSTREAM_MAX_ATTEMPTS`` credentials) —
there is nobody else to protect. The window is short so that one coincidental failure
of another customer lends a repeating customer's failures weight only briefly; and a
request that makes the upstream fail only some of the time can still cool a credential
through the second rule, once per success, with the usual growing cooldown.

Secrets are never printed: :class:`Credential` hides the secret from ``repr`` and
offers a masked :attr:`Credential.display`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alicode_gw.store.unavailable import DATABASE_FAILED, REDIS_FAILED
from alicode_gw.tasks import TaskTracker
from alicode_gw.upstream.affinity import Candidate, Rendezvous, limited_for
from alicode_gw.upstream.credentials import Credential
from alicode_gw.upstream.health import (
    FAIL_SCRIPT,
    OK_SCRIPT,
    blame_key,
    events_channel,
    health_keys,
)
from alicode_gw.upstream.outcome import RATE_LIMIT_COOLDOWN_CAP, Outcome
from alicode_gw.upstream.picking import Entry, pick_affine, pick_weighted

log = logging.getLogger(__name__)

DEFAULT_RATE_LIMIT_COOLDOWN = 5.0  # a 429 that names no reset time
MIN_COOLDOWN = 1.0
BACKOFF_BASE = 1.0  # 529 / 5xx / connection errors: 1 s, 2 s, 4 s ... capped
BACKOFF_CAP = 60.0
PROBE_TTL = 60.0  # how long a node may hold the half-open probe before another may
TRIP_TTL = 3600.0  # a tripped credential nobody probed for this long is trusted again
BLAME_WINDOW = 10.0  # seconds a customer's failure counts towards cooling a credential
BLAME_QUORUM = 2  # distinct customers whose failures cool a credential
_BACKOFF = frozenset({Outcome.OVERLOADED, Outcome.SERVER_ERROR, Outcome.CONNECT_ERROR})
_DISABLE_REASONS = {
    Outcome.AUTH_FAILED: "upstream rejected the credential (401)",
    Outcome.BILLING_FAILED: "upstream billing error (out of credit, or at its usage limit)",
}


# ---------------------------------------------------------------- the pool

_LISTEN_POLL = 1.0


def _raise_if_cancelled() -> None:
    """redis-py (8.1) can swallow a cancellation that lands while it connects; the
    task then still reports ``cancelling()``. Honour it, or shutdown would hang."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class KeyPool:
    """The in-process view of the credential pool; see the module docstring."""

    def __init__(
        self,
        db: asyncpg.Pool,
        redis: Redis,
        prefix: str,
        *,
        refresh_interval: float = 1.0,
        reload_interval: float = 5.0,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        probe_ttl: float = PROBE_TTL,
        blame_window: float = BLAME_WINDOW,
        blame_quorum: int = BLAME_QUORUM,
        affinity: bool = True,
        inflight_cap: int = 0,
        ratelimit_floor: int = 5,
    ) -> None:
        self._db = db
        self._redis = redis
        self._prefix = prefix
        self._channel = events_channel(prefix)
        self._refresh_interval = refresh_interval
        self._reload_interval = reload_interval
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._probe_ttl = probe_ttl
        self._blame_window = blame_window
        self._blame_quorum = blame_quorum
        self._affinity = affinity
        self._inflight_cap = inflight_cap
        self._ratelimit_floor = ratelimit_floor
        self._rendezvous = Rendezvous(())
        self._node = secrets.token_hex(6)
        self._entries: list[Entry] = []
        self._by_id: dict[int, Entry] = {}
        self._wake = asyncio.Event()
        self._reload_requested = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._fail_script = redis.register_script(FAIL_SCRIPT)
        self._ok_script = redis.register_script(OK_SCRIPT)

    @classmethod
    async def open(
        cls, db: asyncpg.Pool, redis: Redis, prefix: str, tasks: TaskTracker, **options: Any
    ) -> KeyPool:
        """Load the credentials and their health, then keep them current."""
        pool = cls(db, redis, prefix, **options)
        await pool.start(tasks)
        return pool

    async def start(self, tasks: TaskTracker) -> None:
        await self.refresh(reload=True)
        self._tasks = [
            tasks.spawn(self._refresh_loop(), name="keypool-refresh", perpetual=True),
            tasks.spawn(self._listen_loop(), name="keypool-events", perpetual=True),
        ]

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ hot path

    def pick(
        self, exclude: frozenset[int] = frozenset(), affinity: bytes | None = None
    ) -> Credential:
        """The credential for the next attempt (never one in ``exclude``).

        With an ``affinity`` key (and affinity routing on): the first usable credential
        in the key's rendezvous order (:mod:`alicode_gw.upstream.affinity`), passing
        over those at their in-flight cap or near their rate limit while a later one is
        free; a half-open credential whose probe this node holds takes its own
        conversations' first request back. Otherwise: half-open credentials whose probe
        this node holds go first (one request each), then smooth weighted round-robin
        over the healthy ones.
        """
        now = time.monotonic()
        if affinity is not None and self._affinity:
            order = self._rendezvous.order(affinity)
            return pick_affine(order, self._by_id, exclude, now, self._inflight_cap).cred
        return pick_weighted(self._entries, exclude, now).cred

    def started(self, cred: Credential) -> None:
        """An attempt with ``cred`` begins (counted against the in-flight cap)."""
        entry = self._by_id.get(cred.id)
        if entry is not None:
            entry.inflight += 1

    def finished(self, cred: Credential) -> None:
        """The attempt :meth:`started` with ``cred`` is over (answer read or failed)."""
        entry = self._by_id.get(cred.id)
        if entry is not None and entry.inflight > 0:
            entry.inflight -= 1

    def observe_limits(self, cred: Credential, headers: Any) -> None:
        """Note how close ``cred`` is to its own upstream rate limit (its answer's
        ``anthropic-ratelimit-*`` headers); affinity passes over it meanwhile."""
        entry = self._by_id.get(cred.id)
        if entry is not None:
            seconds = limited_for(headers, self._ratelimit_floor, time.time())
            entry.limited_until = time.monotonic() + seconds if seconds else 0.0

    async def report(
        self,
        cred: Credential,
        outcome: Outcome,
        cooldown: float | None = None,
        *,
        customer: str | None = None,
    ) -> bool:
        """Apply what an attempt with ``cred`` showed; shared with every node.

        ``customer`` names who sent the request (an account): a 529, other 5xx or
        connect failure then cools the credential only once failures came from
        several customers (see the module docstring); None cools at once. True when
        such a failure was left to that customer alone (the credential stays in the
        pool; :meth:`confirm` can still cool it).

        OK costs no I/O unless the credential was tripped (the probe's success).
        Never raises for Redis/PostgreSQL trouble: the view is then updated locally.
        """
        entry = self._by_id.get(cred.id)
        if outcome is Outcome.OK:
            if entry is not None and entry.tripped and entry.cool_until <= time.monotonic():
                await self._recovered(cred, entry)
        elif outcome is Outcome.CLIENT_ERROR:
            if entry is not None:
                entry.probe_out = False  # says nothing about the key: let another probe
        elif outcome in _DISABLE_REASONS:
            await self._disable(cred, entry, _DISABLE_REASONS[outcome])
        elif outcome is Outcome.RATE_LIMITED:
            seconds = DEFAULT_RATE_LIMIT_COOLDOWN if cooldown is None else cooldown
            seconds = min(max(seconds, MIN_COOLDOWN), RATE_LIMIT_COOLDOWN_CAP)
            await self._trip(cred, entry, "fixed", seconds)
        elif outcome in _BACKOFF:
            return not await self._trip(cred, entry, "backoff", self._backoff_base, customer)
        return False

    async def confirm(self, cred: Credential) -> None:
        """A failure of ``cred`` left to one customer was the credential's after all:
        the same request then succeeded on another credential. Cool it."""
        await self._trip(cred, self._by_id.get(cred.id), "backoff", self._backoff_base)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per credential: name, masked key, weight, state and cooldown remaining."""
        now = time.monotonic()
        rows: list[dict[str, Any]] = []
        for entry in self._entries:
            remaining = max(entry.cool_until - now, 0.0) if entry.tripped else 0.0
            if entry.disabled:
                state = "disabled"
            elif entry.tripped:
                state = "cooling"
            else:
                state = "healthy"
            rows.append(
                {
                    "id": entry.cred.id,
                    "name": entry.cred.name,
                    "display": entry.cred.display,
                    "weight": entry.cred.weight,
                    "cache_group": entry.cred.cache_group,
                    "in_flight": entry.inflight,
                    "state": state,
                    "half_open": entry.tripped and not entry.disabled and remaining == 0.0,
                    "cooldown_remaining": round(remaining, 3),
                    "disabled_reason": entry.disabled_reason,
                }
            )
        return rows

    # ------------------------------------------------------------ report helpers

    async def _trip(
        self,
        cred: Credential,
        entry: Entry | None,
        mode: str,
        seconds: float,
        customer: str | None = None,
    ) -> bool:
        """Cool ``cred`` (unless a ``customer``'s failure lacks the quorum); True if so."""
        cool, trip, probe = health_keys(self._prefix, cred.id)
        try:
            ms = int(
                await self._fail_script(
                    keys=[cool, trip, probe, blame_key(self._prefix, cred.id)],
                    args=[
                        mode,
                        int(seconds * 1000),
                        int(self._backoff_cap * 1000),
                        int(TRIP_TTL * 1000),
                        self._channel,
                        f"cool {self._node} {cred.id} ",
                        customer or "",
                        int(self._blame_window * 1000),
                        self._blame_quorum,
                    ],
                )
            )
        except REDIS_FAILED as exc:
            log.warning("upstream %s: cannot share its cooldown (%s)", cred.name, exc)
            if entry is None:
                return True
            if entry.tripped and entry.cool_until > time.monotonic():
                return True
            if customer is not None and not self._blamed_enough(entry, customer):
                ms = -1
            else:
                entry.streak += 1
                if mode == "backoff":
                    seconds = min(seconds * 2 ** (entry.streak - 1), self._backoff_cap)
                ms = int(seconds * 1000)
        if ms < 0:  # one customer's failure: the credential stays; let another probe
            if entry is not None:
                entry.probe_out = False
            return False
        log.info("upstream %s cools down for %.1f s", cred.name, ms / 1000)
        if entry is not None:
            self._apply_cool(entry, ms)
        return True

    def _blamed_enough(self, entry: Entry, customer: str) -> bool:
        """The quorum rule of the failure script, on this node's view (no Redis)."""
        now = time.monotonic()
        entry.blamed = {
            who: when for who, when in entry.blamed.items() if when > now - self._blame_window
        }
        entry.blamed[customer] = now
        return len(entry.blamed) >= self._blame_quorum

    async def _recovered(self, cred: Credential, entry: Entry) -> None:
        cool, trip, probe = health_keys(self._prefix, cred.id)
        try:
            done = await self._ok_script(
                keys=[cool, trip, probe], args=[self._channel, f"ok {self._node} {cred.id}"]
            )
        except REDIS_FAILED as exc:
            log.warning("upstream %s: cannot share its recovery (%s)", cred.name, exc)
            done = 1
        if done:
            log.info("upstream %s is healthy again", cred.name)
            self._apply_ok(entry)

    async def _disable(self, cred: Credential, entry: Entry | None, reason: str) -> None:
        log.warning("upstream %s disabled: %s", cred.name, reason)
        if entry is not None:
            entry.disabled, entry.disabled_reason = True, reason
            entry.version += 1
        try:
            await self._db.execute(
                "UPDATE upstream_credentials SET status = 'disabled', disabled_reason = $2,"
                " disabled_at = now(), updated_at = now() WHERE id = $1 AND status = 'active'",
                cred.id,
                reason,
            )
        except DATABASE_FAILED as exc:
            log.error("upstream %s: cannot record that it is disabled (%s)", cred.name, exc)
        try:
            await self._redis.publish(self._channel, f"disable {self._node} {cred.id}")
        except REDIS_FAILED as exc:
            log.warning("upstream %s: cannot announce that it is disabled (%s)", cred.name, exc)

    def _apply_cool(self, entry: Entry, ms: int) -> None:
        entry.tripped = True
        entry.cool_until = max(entry.cool_until, time.monotonic() + ms / 1000)
        entry.probe_until, entry.probe_out = 0.0, False
        entry.version += 1
        self._wake.set()  # the refresh loop re-plans its wake-up for the expiry

    @staticmethod
    def _apply_ok(entry: Entry) -> None:
        entry.tripped, entry.cool_until, entry.streak = False, 0.0, 0
        entry.probe_until, entry.probe_out = 0.0, False
        entry.version += 1

    # ------------------------------------------------------------ background

    async def refresh(self, *, reload: bool = False) -> None:
        """Bring the view up to date now: the table (if ``reload``) and Redis."""
        if reload:
            await self._load()
        await self._sync()

    async def _load(self) -> None:
        rows = await self._db.fetch(
            "SELECT id, name, secret, weight, cache_group, status, disabled_reason"
            " FROM upstream_credentials ORDER BY id"
        )
        entries: list[Entry] = []
        for row in rows:
            cred = Credential(
                row["id"], row["name"], row["weight"], row["secret"], row["cache_group"]
            )
            entry = self._by_id.get(cred.id)
            if entry is None:
                entry = Entry(cred)
            elif entry.cred != cred:
                entry.cred = cred
            entry.disabled = row["status"] == "disabled"
            entry.disabled_reason = row["disabled_reason"]
            entries.append(entry)
        self._entries = entries
        self._by_id = {entry.cred.id: entry for entry in entries}
        self._rendezvous = Rendezvous(
            Candidate(e.cred.id, e.cred.weight, e.cred.cache_group) for e in entries
        )

    async def _sync(self) -> None:
        """One pipelined read of every credential's cooldown; then take the probe
        lock of each credential whose cooldown is over."""
        entries = [entry for entry in self._entries if not entry.disabled]
        if not entries:
            return
        versions = [entry.version for entry in entries]
        pipe = self._redis.pipeline(transaction=False)
        for entry in entries:
            cool, trip, _ = health_keys(self._prefix, entry.cred.id)
            pipe.pttl(cool)
            pipe.exists(trip)
        try:
            replies = await pipe.execute()
        except REDIS_FAILED:
            await self._take_probes()  # Redis is down: cooldowns still end, locally
            raise
        now = time.monotonic()
        for i, entry in enumerate(entries):
            if entry.version != versions[i]:
                continue  # changed locally meanwhile: that news is newer
            ttl, tripped = replies[2 * i], replies[2 * i + 1]
            if ttl > 0:
                entry.tripped = True
                entry.cool_until = now + ttl / 1000
            elif tripped:
                entry.tripped = True
                entry.cool_until = min(entry.cool_until, now)
            elif entry.tripped:
                self._apply_ok(entry)
        await self._take_probes()

    async def _take_probes(self) -> None:
        now = time.monotonic()
        wanted = [
            entry
            for entry in self._entries
            if entry.tripped
            and not entry.disabled
            and entry.cool_until <= now
            and entry.probe_until <= now
        ]
        if not wanted:
            return
        ttl_ms = int(self._probe_ttl * 1000)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for entry in wanted:
                probe = health_keys(self._prefix, entry.cred.id)[2]
                pipe.set(probe, self._node, nx=True, px=ttl_ms)
            won = await pipe.execute()
        except REDIS_FAILED as exc:
            log.warning("key pool: probing without Redis coordination (%s)", exc)
            won = [True] * len(wanted)
        until = time.monotonic() + self._probe_ttl
        for entry, ok in zip(wanted, won, strict=True):
            if ok:
                entry.probe_until, entry.probe_out = until, False

    def _next_wake(self) -> float:
        now = time.monotonic()
        delay = self._refresh_interval
        for entry in self._entries:
            if entry.tripped and entry.cool_until > now:
                delay = min(delay, entry.cool_until - now + 0.005)
        return max(delay, 0.01)

    async def _refresh_loop(self) -> None:
        next_reload = time.monotonic() + self._reload_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_wake()):
                    await self._wake.wait()
            self._wake.clear()
            reload = self._reload_requested or time.monotonic() >= next_reload
            try:
                if reload:
                    self._reload_requested = False
                    next_reload = time.monotonic() + self._reload_interval
                await self.refresh(reload=reload)
            except (*DATABASE_FAILED, *REDIS_FAILED) as exc:
                log.warning("key pool refresh failed: %s", exc)
            _raise_if_cancelled()

    async def _listen_loop(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._wake.set()  # messages may have been missed while unsubscribed
                while True:
                    _raise_if_cancelled()
                    message = await pubsub.get_message(timeout=_LISTEN_POLL)
                    if message is not None:
                        self._on_event(message.get("data"))
            except REDIS_FAILED as exc:
                log.warning("key pool: event subscription lost (%s)", exc)
            finally:
                with contextlib.suppress(*REDIS_FAILED):
                    await pubsub.aclose()
            _raise_if_cancelled()
            await asyncio.sleep(1.0)

    def _on_event(self, data: Any) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        parts = text.split()
        if parts == ["reload"]:
            self._reload_requested = True
            self._wake.set()
            return
        if len(parts) < 3 or parts[1] == self._node or not parts[2].isdigit():
            return
        entry = self._by_id.get(int(parts[2]))
        if entry is None:
            self._reload_requested = True  # a credential added since the last load
            self._wake.set()
            return
        if parts[0] == "cool" and len(parts) == 4 and parts[3].isdigit():
            self._apply_cool(entry, int(parts[3]))
        elif parts[0] == "ok":
            self._apply_ok(entry)
        elif parts[0] == "disable":
            entry.disabled = True
            entry.version += 1
            self._reload_requested = True  # for the reason
            self._wake.set()
