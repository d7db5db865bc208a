"""Authentication of ``sk-ali-`` keys: a cached bcrypt check, revocation on every node.

Hot path (a key this process has verified in the last ``cache_ttl`` seconds): parse the
key, one keyed BLAKE2b digest of the secret, a constant-time compare with the digest cached
when bcrypt accepted it. No bcrypt, no database, no Redis.

A cached key whose entry is older than ``cache_ttl``, presented with the cached secret,
is re-read from PostgreSQL (one request re-reads, the others keep using the entry), not
counted as an attempt. Everything else is the cold path, which first counts the attempt
against the client IP in Redis, atomically (one script), before any work (fail closed:
503 when Redis is down; 429 past ``fail_limit`` attempts in ``fail_window`` seconds; the
count is given back when the key is accepted), so concurrent attempts cannot all pass a
check made before any of them was counted. Then:

- missing / malformed key: 401 without any lookup;
- unknown public id, revoked key, stopped account: 401 after one indexed query, no bcrypt;
- a wrong secret for a cached key: 401 without bcrypt (a key's hash never changes);
- otherwise bcrypt once, in a small thread pool; concurrent requests presenting the same
  (key, secret) share one check (one counted attempt, one read, one bcrypt run), and a
  recently rejected secret is not re-checked.
  One client IP has at most ``bcrypt_per_ip`` checks running at a time (the rest of its
  checks wait their turn), so one address cannot take every bcrypt thread.

Every failure stays counted against the IP and is answered no sooner than
``failure_floor`` seconds after it arrived, so missing, malformed, unknown and revoked
keys look alike in body and timing.

Revocation: :func:`announce_revoked` publishes public ids on Redis; every node's
:meth:`Authenticator.listen` drops them from its cache at once. The safety net is the
cache TTL: an entry older than ``cache_ttl`` is re-read from PostgreSQL (no bcrypt)
before it is trusted again, and after a lost subscription every entry is re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from alicode_gw.errors import AuthenticationError, RateLimitError, ServiceUnavailableError
from alicode_gw.identity import accounts, keys
from alicode_gw.store.unavailable import DATABASE_FAILED, REDIS_FAILED, unavailable

log = logging.getLogger(__name__)

REVOKED_CHANNEL = "keys:revoked"
MISSING_MESSAGE = (
    "Missing API key: send it in the x-api-key header or as 'Authorization: Bearer <key>'."
)
INVALID_MESSAGE = "Invalid API key."
KEY_STORE_UNAVAILABLE = "The key store is temporarily unavailable; retry shortly."
THROTTLE_UNAVAILABLE = (
    "Authentication is temporarily unavailable (rate-limit store unreachable); retry shortly."
)
REJECTED_TTL = 300.0
# Count one attempt; the window starts with the first (a count without expiry gets one).
# Returns {count, ms left in the window}. (A script, not EXPIRE NX: Redis 6.2 lacks NX.)
COUNT_LUA = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""
# Give back one counted attempt, never below zero and never on a count that has expired
# (a DECR there would create a count without expiry).
_GIVE_BACK_LUA = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An authenticated key and its limits (each ``None`` = unlimited)."""

    id: int
    public_id: str
    account_id: int
    name: str
    rpm_limit: int | None
    concurrency_limit: int | None
    budget_tokens: int | None
    spend_cap_nanos: int | None
    allowed_models: frozenset[str] | None
    response_cache: bool = True  # False: the key opted out of the response cache

    @classmethod
    def from_record(cls, record: accounts.KeyRecord) -> ApiKey:
        models = record.allowed_models
        return cls(
            id=record.id,
            public_id=record.public_id,
            account_id=record.account_id,
            name=record.name,
            rpm_limit=record.rpm_limit,
            concurrency_limit=record.concurrency_limit,
            budget_tokens=record.budget_tokens,
            spend_cap_nanos=record.spend_cap_nanos,
            allowed_models=None if models is None else frozenset(models),
            response_cache=record.response_cache,
        )

    @property
    def masked(self) -> str:
        return keys.masked(self.public_id)

    def allows(self, *models: str) -> bool:
        """Whether any of ``models`` (e.g. an alias and its target) is allowed."""
        return self.allowed_models is None or any(m in self.allowed_models for m in models)


class _Abandoned(Exception):
    """The check a request joined was given up by the request that ran it."""


@dataclass(slots=True)
class _Gate:
    semaphore: asyncio.Semaphore
    users: int = 0


@dataclass(slots=True)
class _Entry:
    key: ApiKey
    secret_hash: str
    digest: bytes
    fresh_until: float
    refreshing: bool = field(default=False)


def presented_key(request: web.BaseRequest) -> str | None:
    """The key on ``x-api-key`` or ``Authorization: Bearer``; ``None`` when neither
    header is there, ``""`` when Authorization uses another scheme."""
    value = request.headers.get("x-api-key", "").strip()
    if value:
        return value
    authorization = request.headers.get("authorization")
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def announce_revoked(redis: Redis, prefix: str, public_ids: Iterable[str]) -> None:
    """Tell every gateway node to forget these keys now (call it after the SQL commit).
    If Redis cannot be reached this logs a warning: the nodes then notice within their
    cache TTL."""
    ids = sorted(set(public_ids))
    if not ids:
        return
    try:
        await redis.publish(prefix + REVOKED_CHANNEL, json.dumps({"revoked": ids}))
    except REDIS_FAILED as exc:
        log.warning(
            "could not announce %d revoked key(s) on Redis (%s); nodes drop them within "
            "their cache TTL",
            len(ids),
            type(exc).__name__,
        )


class Authenticator:
    """Per-process key checker (``state.auth``); see the module docstring."""

    def __init__(
        self,
        db: asyncpg.Pool,
        redis: Redis,
        prefix: str,
        *,
        cache_ttl: float = 10.0,
        fail_limit: int = 30,
        fail_window: int = 60,
        failure_floor: float = 0.05,
        bcrypt_threads: int = 2,
        bcrypt_per_ip: int | None = None,
        max_pending_checks: int = 256,
        max_entries: int = 100_000,
    ) -> None:
        self._db = db
        self._redis = redis
        self._prefix = prefix
        self.channel = prefix + REVOKED_CHANNEL
        self.cache_ttl = cache_ttl
        self.fail_limit = fail_limit
        self.fail_window = fail_window
        self.failure_floor = failure_floor
        self._max_pending = max_pending_checks
        self._max_entries = max_entries
        self._pepper = secrets.token_bytes(32)
        self._cache: dict[str, _Entry] = {}
        self._rejected: dict[tuple[str, bytes], float] = {}
        self._checks: dict[tuple[str, bytes], asyncio.Future[bool]] = {}
        self._epoch = 0  # bumped when every entry must be re-read
        self._generations: dict[str, int] = {}  # bumped when one key is revoked
        self._last_used: dict[int, float] = {}
        self._executor = ThreadPoolExecutor(bcrypt_threads, thread_name_prefix="bcrypt")
        # Default: half the threads, so other addresses always find one free.
        self.bcrypt_per_ip = bcrypt_per_ip or max(1, bcrypt_threads // 2)
        self._ip_gates: dict[str, _Gate] = {}
        self._verifying: dict[tuple[str, bytes], asyncio.Future[ApiKey]] = {}
        self._count_script = redis.register_script(COUNT_LUA)
        self._give_back_script = redis.register_script(_GIVE_BACK_LUA)
        self.subscribed = asyncio.Event()
        self.bcrypt_runs = 0

    # -- the request path -------------------------------------------------------------

    async def authenticate(self, request: web.BaseRequest, client_ip: str) -> ApiKey:
        """The key of this request, or :class:`AuthenticationError` (401),
        :class:`RateLimitError` (429, IP throttled) or :class:`ServiceUnavailableError`."""
        started = time.monotonic()
        raw = presented_key(request)
        parsed = keys.parse_key(raw) if raw else None
        token: tuple[str, bytes] | None = None
        if parsed is not None:
            digest = keys.secret_digest(self._pepper, parsed.secret)
            token = (parsed.public_id, digest)
            entry = self._cache.get(parsed.public_id)
            if entry is not None and keys.same_digest(entry.digest, digest):
                if entry.fresh_until > started or entry.refreshing:
                    self._last_used[entry.key.id] = time.time()
                    return entry.key
                return await self._refresh(parsed, client_ip, started)
            pending = self._verifying.get(token)
            if pending is not None:  # the same key is being checked: its outcome is ours
                with contextlib.suppress(_Abandoned):
                    return await self._joined(pending, started)
        await self._count_attempt(client_ip)
        try:
            key = await self._answered(self._check(raw, parsed, token, client_ip), started)
        except AuthenticationError:
            raise  # a failed attempt: it stays counted
        except BaseException:
            await self._give_back(client_ip)  # not the client's failure (e.g. 503)
            raise
        await self._give_back(client_ip)
        return key

    async def _check(
        self,
        raw: str | None,
        parsed: keys.ParsedKey | None,
        token: tuple[str, bytes] | None,
        client_ip: str,
    ) -> ApiKey:
        if raw is None:
            raise AuthenticationError(MISSING_MESSAGE)
        if parsed is None or token is None:
            raise AuthenticationError(INVALID_MESSAGE)
        return await self._verify_once(token, parsed, client_ip)

    async def _verify_once(
        self, token: tuple[str, bytes], parsed: keys.ParsedKey, client_ip: str
    ) -> ApiKey:
        """:meth:`_verify`, shared with the requests that present the same key meanwhile:
        a stampede of one key's first requests (a cold cache after a restart) is one
        attempt against the throttle, one database read and one bcrypt run."""
        shared: asyncio.Future[ApiKey] = asyncio.get_running_loop().create_future()
        self._verifying[token] = shared
        try:
            key = await self._verify(parsed, client_ip)
        except Exception as exc:
            shared.set_exception(exc)
            shared.exception()  # the joiners re-raise it; nothing is left unretrieved
            raise
        except BaseException:
            shared.cancel()  # this request went away: the joiners check for themselves
            raise
        else:
            shared.set_result(key)
            return key
        finally:
            if self._verifying.get(token) is shared:
                del self._verifying[token]

    async def _joined(self, pending: asyncio.Future[ApiKey], started: float) -> ApiKey:
        """The outcome of a check under way for the same key (:class:`_Abandoned` when
        the request that ran it went away)."""
        try:
            return await self._answered(asyncio.shield(pending), started)
        except asyncio.CancelledError:
            if pending.cancelled():
                raise _Abandoned from None
            raise

    async def _refresh(self, parsed: keys.ParsedKey, client_ip: str, started: float) -> ApiKey:
        """A stale entry presented with the secret bcrypt accepted: re-read the key (the
        requests arriving meanwhile keep using the entry). Not counted against the
        address: it is no guess, and a busy client must not throttle itself out of its
        own key when the entry goes stale under load."""
        return await self._answered(self._verify(parsed, client_ip), started)

    async def _answered(self, check: Awaitable[ApiKey], started: float) -> ApiKey:
        """The key ``check`` finds; a refusal (revoked, stopped, wrong) answered no sooner
        than the failure floor after the request arrived."""
        try:
            key = await check
        except AuthenticationError:
            delay = started + self.failure_floor - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            raise
        self._last_used[key.id] = time.time()
        return key

    async def _verify(self, parsed: keys.ParsedKey, client_ip: str) -> ApiKey:
        public_id = parsed.public_id
        digest = keys.secret_digest(self._pepper, parsed.secret)
        entry = self._cache.get(public_id)
        if entry is not None and not keys.same_digest(entry.digest, digest):
            raise AuthenticationError(INVALID_MESSAGE)  # known key, wrong secret
        if entry is not None:
            entry.refreshing = True  # other requests keep using it meanwhile
        epoch = self._epoch
        generation = self._generations.get(public_id, 0)
        try:
            row = await self._fetch(public_id)
        finally:
            if entry is not None:
                entry.refreshing = False
        if row is None or not row.usable:
            self._forget(public_id)
            raise AuthenticationError(INVALID_MESSAGE)
        # A concurrent request may have verified this key while we were reading.
        current = self._cache.get(public_id)
        if current is not None and current.secret_hash == row.secret_hash:
            entry = current
            if not keys.same_digest(entry.digest, digest):
                raise AuthenticationError(INVALID_MESSAGE)
        known = entry is not None and entry.secret_hash == row.secret_hash
        if not known and not await self._bcrypt(
            client_ip, public_id, digest, parsed.secret, row.secret_hash
        ):
            raise AuthenticationError(INVALID_MESSAGE)
        key = ApiKey.from_record(row.key)
        if self._epoch == epoch and self._generations.get(public_id, 0) == generation:
            # no revocation arrived while we were looking
            if public_id not in self._cache and len(self._cache) >= self._max_entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[public_id] = _Entry(
                key, row.secret_hash, digest, time.monotonic() + self.cache_ttl
            )
        return key

    async def _fetch(self, public_id: str) -> accounts.AuthRow | None:
        with unavailable(KEY_STORE_UNAVAILABLE, DATABASE_FAILED):
            return await accounts.fetch_auth_row(self._db, public_id)

    async def _bcrypt(
        self, client_ip: str, public_id: str, digest: bytes, secret: str, secret_hash: str
    ) -> bool:
        """One bcrypt check off the event loop, shared by concurrent identical checks and
        at most ``bcrypt_per_ip`` at a time for one address; recent rejections are
        remembered so they cost no bcrypt again."""
        token = (public_id, digest)
        rejected_until = self._rejected.get(token)
        if rejected_until is not None and rejected_until > time.monotonic():
            return False
        future = self._checks.get(token)
        if future is not None:  # joining a check under way takes no turn of its own
            ok = await self._outcome(token, future)
        else:
            async with self._gate(client_ip):
                future = self._checks.get(token)
                if future is None:
                    if len(self._checks) >= self._max_pending:
                        raise ServiceUnavailableError(
                            "Too many key checks in progress; retry shortly."
                        )
                    future = asyncio.get_running_loop().run_in_executor(
                        self._executor, keys.check_secret, secret, secret_hash
                    )
                    self.bcrypt_runs += 1
                    self._checks[token] = future
                ok = await self._outcome(token, future)
        if not ok:
            if len(self._rejected) >= 10_000:
                self._rejected.clear()
            self._rejected[token] = time.monotonic() + REJECTED_TTL
        return ok

    async def _outcome(self, token: tuple[str, bytes], future: asyncio.Future[bool]) -> bool:
        try:
            return await asyncio.shield(future)
        finally:
            # Removed by the first waiter to resume, which then fills the cache without
            # awaiting again: a later arrival finds either the future or the entry.
            if self._checks.get(token) is future:
                del self._checks[token]

    @contextlib.asynccontextmanager
    async def _gate(self, client_ip: str) -> AsyncIterator[None]:
        """A turn among this address's bcrypt checks (forgotten when none waits)."""
        gate = self._ip_gates.get(client_ip)
        if gate is None:
            gate = self._ip_gates[client_ip] = _Gate(asyncio.Semaphore(self.bcrypt_per_ip))
        gate.users += 1
        try:
            async with gate.semaphore:
                yield
        finally:
            gate.users -= 1
            if not gate.users:
                del self._ip_gates[client_ip]

    # -- failed-attempt throttling (Redis, per client IP) ----------------------------------

    def _fail_key(self, ip: str) -> str:
        return f"{self._prefix}authfail:{ip}"

    async def _count_attempt(self, ip: str) -> None:
        """Count a cold-path attempt of ``ip`` first, in one atomic step; refuse it past
        ``fail_limit`` (the window starts with the first attempt counted)."""
        name = self._fail_key(ip)
        with unavailable(THROTTLE_UNAVAILABLE, REDIS_FAILED):
            count, ttl_ms = await self._count_script(keys=[name], args=[self.fail_window * 1000])
            if count <= self.fail_limit:
                return
        retry = max(1, math.ceil(ttl_ms / 1000)) if ttl_ms > 0 else self.fail_window
        err = RateLimitError(
            f"Too many failed authentication attempts from this address; retry in {retry} s.",
            headers={"Retry-After": str(retry)},
        )
        err.limit = "auth_failures"
        raise err

    async def _give_back(self, ip: str) -> None:
        """An attempt that was not a failed authentication no longer counts."""
        try:
            await self._give_back_script(keys=[self._fail_key(ip)])
        except REDIS_FAILED as exc:
            log.warning("could not give back an authentication attempt: %r", exc)

    # -- revocation ---------------------------------------------------------------------

    def _forget(self, public_id: str) -> None:
        self._cache.pop(public_id, None)

    def revoked(self, public_ids: Iterable[str]) -> None:
        """Drop these keys from this process's cache now."""
        if len(self._generations) > 10_000:
            self._generations.clear()
            self._epoch += 1
        for public_id in public_ids:
            self._generations[public_id] = self._generations.get(public_id, 0) + 1
            self._forget(public_id)

    def mark_all_stale(self) -> None:
        """Re-read every cached key from the database before trusting it again."""
        self._epoch += 1
        for entry in self._cache.values():
            entry.fresh_until = 0.0

    def _apply(self, data: bytes | str) -> None:
        try:
            ids = json.loads(data)["revoked"]
            valid = [i for i in ids if isinstance(i, str)]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed revocation message")
            self.mark_all_stale()
            return
        self.revoked(valid)

    async def listen(self) -> None:
        """Perpetual task: apply revocations announced on Redis; resubscribe after a
        lost connection (and then re-check every cached key, since messages may have
        been missed)."""
        backoff = 0.1
        resubscribing = False
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if resubscribing:
                    self.mark_all_stale()
                resubscribing = True
                self.subscribed.set()
                backoff = 0.1
                task = asyncio.current_task()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if task is not None and task.cancelling():
                        # redis-py may swallow a cancellation that lands in the read
                        raise asyncio.CancelledError
                    if message is not None and message.get("type") == "message":
                        self._apply(message["data"])
            except REDIS_FAILED as exc:
                log.warning("revocation channel lost (%s); resubscribing", type(exc).__name__)
            finally:
                self.subscribed.clear()
                # Bounded: closing a pubsub cancelled mid-subscribe can wait forever
                # (the client's own close at shutdown drops the connection anyway).
                with contextlib.suppress(*REDIS_FAILED):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    # -- last use, recorded in batches ------------------------------------------------

    async def flush_last_used(self) -> None:
        pending, self._last_used = self._last_used, {}
        if not pending:
            return
        stamps = {key_id: dt.datetime.fromtimestamp(at, dt.UTC) for key_id, at in pending.items()}
        try:
            await accounts.touch_keys(self._db, stamps)
        except DATABASE_FAILED as exc:
            log.warning("could not record key last-use times (%s)", type(exc).__name__)

    async def flush_loop(self, interval: float = 30.0) -> None:
        """Perpetual task: write last-use times every ``interval`` seconds."""
        while True:
            await asyncio.sleep(interval)
            await self.flush_last_used()

    async def close(self) -> None:
        await self.flush_last_used()
        self._executor.shutdown(wait=False, cancel_futures=True)
