"""Per-IP and per-key limits, enforced across nodes in Redis by atomic Lua scripts.

:meth:`Limiter.admit` is ONE script call (EVALSHA, reloaded on NOSCRIPT) that
checks, in this order, the IP's requests per minute and concurrency, then the key's
requests per minute, concurrency and rolling token budget, and takes the slots only
if every check passes, so limits hold exactly however many nodes admit at once.

- Requests per minute: a sliding 60-second log (sorted set of admission tokens scored
  by Redis time). Exact; no burst at a window boundary.
- Concurrency: leases in a sorted set scored by their expiry (``lease_seconds``).
  Expired leases are dropped before counting, so a crashed node's slots free
  themselves. Each node renews its own live leases in one call every
  ``refresh_interval`` seconds (:meth:`Limiter.refresh_loop`, a perpetual task), so a
  10-minute stream keeps its slot without the relay doing anything.
- Token budget: per-minute buckets (hash) indexed by a sorted set plus a running
  total; buckets leave the total once they are older than the 5-hour window, so the
  window rolls with one-minute granularity.

The script calls of concurrent requests (every admit and finish of this process) travel
together: a :class:`~alicode_gw.batching.Coalescer` sends whatever queued up during the
previous round trip as one pipeline, in submission order, so under load the client-side
cost of a call (the dominant one in redis-py) is shared by many requests, and a lone
request still goes out at once.

All clocks are Redis's (``TIME``), so node clocks do not matter. If Redis cannot be
reached, admission fails closed with a 503 (``ServiceUnavailableError``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from alicode_gw.auth import ApiKey
from alicode_gw.batching import Coalescer
from alicode_gw.errors import RateLimitError, ServiceUnavailableError
from alicode_gw.resp import RespConnection
from alicode_gw.tasks import TaskTracker

log = logging.getLogger(__name__)

RPM_WINDOW_MS = 60_000
BUDGET_WINDOW_MS = 5 * 3600 * 1000
BUCKET_MS = 60_000
PIPELINE_TIMEOUT = 5.0  # seconds for one pipeline's write and replies

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function budget_used(h, z, total, win, bucket)
  local cutoff = now - win - bucket
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
  if #old > 0 then
    local drop = 0
    for _, b in ipairs(old) do
      drop = drop + tonumber(redis.call('HGET', h, b) or '0')
      redis.call('HDEL', h, b)
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
    redis.call('DECRBY', total, drop)
  end
  return tonumber(redis.call('GET', total) or '0')
end
-- when the usage in the window falls below `limit` (ms), or 0 if it already is
local function budget_reset(h, z, used, limit, win, bucket)
  local buckets = redis.call('ZRANGE', z, 0, -1)
  local acc = 0
  for _, b in ipairs(buckets) do
    acc = acc + tonumber(redis.call('HGET', h, b) or '0')
    if used - acc < limit then return tonumber(b) + bucket + win end
  end
  return 0
end
"""

# KEYS: ip rpm, ip conc, key rpm, key conc, budget hash, budget index, budget total
# ARGV: token, ip_rpm, ip_conc, key_rpm, key_conc, budget, lease_ms, rpm_win, bud_win, bucket
# -> {1, key_rpm_remaining, key_rpm_reset_ms, now} or {0, code, limit, reset_ms, retry_ms}
ADMIT_LUA = (
    _PRELUDE
    + """
local token = ARGV[1]
local ip_rpm, ip_conc = tonumber(ARGV[2]), tonumber(ARGV[3])
local key_rpm, key_conc, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease, rpm_win = tonumber(ARGV[7]), tonumber(ARGV[8])
local bud_win, bucket = tonumber(ARGV[9]), tonumber(ARGV[10])

local function window(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - rpm_win)
  local n = redis.call('ZCARD', key)
  local reset = now + rpm_win
  if n > 0 then
    reset = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) + rpm_win
  end
  return n, reset
end
local function leases(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end

if ip_rpm > 0 then
  local n, reset = window(KEYS[1])
  if n >= ip_rpm then return {0, 1, ip_rpm, reset, reset - now} end
end
if ip_conc > 0 and leases(KEYS[2]) >= ip_conc then
  return {0, 2, ip_conc, now + 1000, 1000}
end
local key_n, key_reset = 0, now + rpm_win
if key_rpm > 0 then
  key_n, key_reset = window(KEYS[3])
  if key_n >= key_rpm then return {0, 3, key_rpm, key_reset, key_reset - now} end
end
if key_conc > 0 and leases(KEYS[4]) >= key_conc then
  return {0, 4, key_conc, now + 1000, 1000}
end
if budget > 0 then
  local used = budget_used(KEYS[5], KEYS[6], KEYS[7], bud_win, bucket)
  if used >= budget then
    local reset = budget_reset(KEYS[5], KEYS[6], used, budget, bud_win, bucket)
    if reset <= now then reset = now + bucket end
    return {0, 5, budget, reset, reset - now}
  end
end

if ip_rpm > 0 then
  redis.call('ZADD', KEYS[1], now, token)
  redis.call('PEXPIRE', KEYS[1], rpm_win)
end
if ip_conc > 0 then
  redis.call('ZADD', KEYS[2], now + lease, token)
  redis.call('PEXPIRE', KEYS[2], lease)
end
if key_rpm > 0 then
  redis.call('ZADD', KEYS[3], now, token)
  redis.call('PEXPIRE', KEYS[3], rpm_win)
end
if key_conc > 0 then
  redis.call('ZADD', KEYS[4], now + lease, token)
  redis.call('PEXPIRE', KEYS[4], lease)
end
return {1, key_rpm - key_n - 1, key_reset, now}
"""
)

# KEYS: ip conc, key conc, budget hash, budget index, budget total
# ARGV: token, tokens used, bud_win, bucket
FINISH_LUA = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local n = tonumber(ARGV[2])
if n > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local bud_win, bucket = tonumber(ARGV[3]), tonumber(ARGV[4])
  local b = now - (now % bucket)
  redis.call('HINCRBY', KEYS[3], b, n)
  redis.call('ZADD', KEYS[4], 'NX', b, b)
  redis.call('INCRBY', KEYS[5], n)
  local ttl = bud_win + 2 * bucket
  redis.call('PEXPIRE', KEYS[3], ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
  redis.call('PEXPIRE', KEYS[5], ttl)
end
return 1
"""

# KEYS: lease sets, ARGV: lease_ms, then the token held in each KEYS[i]
REFRESH_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local renewed = 0
for i, key in ipairs(KEYS) do
  renewed = renewed + redis.call('ZADD', key, 'XX', 'CH', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, lease)
end
return renewed
"""

# KEYS: key rpm, key conc, budget hash, budget index, budget total
# ARGV: rpm_win, bud_win, bucket, budget (0 = none)
# -> {requests in the last minute, in flight, used tokens, oldest bucket expiry, reset, now}
STATUS_LUA = (
    _PRELUDE
    + """
local rpm_win, bud_win, bucket = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local recent = redis.call('ZCOUNT', KEYS[1], '(' .. (now - rpm_win), '+inf')
local flying = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
local used = budget_used(KEYS[3], KEYS[4], KEYS[5], bud_win, bucket)
local first = 0
local oldest = redis.call('ZRANGE', KEYS[4], 0, 0)
if #oldest > 0 then first = tonumber(oldest[1]) + bucket + bud_win end
local reset = 0
if budget > 0 and used >= budget then
  reset = budget_reset(KEYS[3], KEYS[4], used, budget, bud_win, bucket)
end
return {recent, flying, used, first, reset, now}
"""
)

_REJECTIONS = {
    1: "Too many requests from this IP address: the limit is {limit} per minute. Retry in {retry}.",
    2: "Too many concurrent requests from this IP address (limit {limit}). "
    "Retry when one finishes.",
    3: "Rate limit exceeded for this API key: {limit} requests per minute. Retry in {retry}.",
    4: "Too many concurrent requests for this API key (limit {limit}). Retry when one finishes.",
    5: "Token budget exceeded for this API key ({limit} tokens per 5h rolling window). "
    "Resets in {retry}.",
}


# Rejection code -> the limit's name (the alicode_limit_rejections_total label).
_LIMIT_NAMES = {
    1: "ip_rpm",
    2: "ip_concurrency",
    3: "key_rpm",
    4: "key_concurrency",
    5: "key_budget",
}


def format_duration(seconds: float) -> str:
    """``8100`` -> ``"2h 15m"``; under a minute, ``"42s"``."""
    total = max(0, math.ceil(seconds))
    if total < 60:
        return f"{total}s"
    hours, rest = divmod(total, 3600)
    minutes = math.ceil(rest / 60) if hours == 0 else rest // 60
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One EVALSHA waiting in the pipeline."""

    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[str | int]


class ScriptPipe:
    """Runs batches of script calls as one pipelined write on a lean connection of its
    own (:class:`~alicode_gw.resp.RespConnection`; the :class:`Coalescer` in front
    sends one batch at a time)."""

    def __init__(self, redis: Redis, timeout: float = PIPELINE_TIMEOUT) -> None:
        self._redis = redis
        self._timeout = timeout
        self.connection = RespConnection.like(redis)

    async def run(self, calls: list[ScriptCall]) -> list[Any]:
        """One outcome per call: its reply, or the error of that call. Calls whose
        script the server does not know (after a restart or ``SCRIPT FLUSH``) are run
        again once it is loaded."""
        outcomes = await self._send(calls)
        missing = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, NoScriptError)]
        if missing:
            try:
                for script in {calls[i].script for i in missing}:
                    await self._redis.script_load(script.script)
                retried = await self._send([calls[i] for i in missing])
            except (RedisError, OSError) as exc:  # only the calls still to do fail
                retried = [exc] * len(missing)
            for i, outcome in zip(missing, retried, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def _send(self, calls: list[ScriptCall]) -> list[Any]:
        async with asyncio.timeout(self._timeout):
            return await self.connection.execute(
                ("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args) for c in calls
            )


async def _nothing() -> None:
    return None


@dataclass(slots=True, eq=False)
class Admission:
    """Slots taken by one admitted request; give it back to :meth:`Limiter.finish`."""

    token: str
    lease_keys: tuple[str, ...]
    finish_keys: tuple[str, str, str, str, str]
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


def _unavailable() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "Rate limiting is temporarily unavailable (limit store unreachable); retry shortly."
    )


class Limiter:
    """Cluster-wide limits in Redis (``state.limiter``); see the module docstring."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        ip_rpm: int,
        ip_concurrency: int,
        lease_seconds: float = 30.0,
        refresh_interval: float = 10.0,
        budget_window_seconds: int = BUDGET_WINDOW_MS // 1000,
        bucket_seconds: int = BUCKET_MS // 1000,
        tasks: TaskTracker | None = None,
    ) -> None:
        """``tasks`` tracks the pipeline flushes (the app passes its own tracker, so
        shutdown drains them)."""
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
        self._pipe = ScriptPipe(redis)
        self._calls: Coalescer[ScriptCall, Any] = Coalescer(
            self._pipe.run,
            tasks if tasks is not None else TaskTracker(),
            name="limits-pipeline",
            max_in_flight=2,  # one connection, replies in order: batches may overlap
        )

    async def _call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script call, sent in the next pipeline; raises its own error."""
        return await self._calls.submit(ScriptCall(script, keys, args))

    def _ip_keys(self, ip: str) -> tuple[str, str]:
        return f"{self._prefix}ip:{ip}:rpm", f"{self._prefix}ip:{ip}:conc"

    def _key_keys(self, key_id: int) -> tuple[str, str, str, str, str]:
        base = f"{self._prefix}key:{key_id}:"
        return base + "rpm", base + "conc", base + "budget:h", base + "budget:z", base + "budget:t"

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

    async def admit(self, ip: str, key: ApiKey, model: str) -> Admission:
        """Take a slot for one request of ``key`` from ``ip`` (one round trip) or raise
        :class:`RateLimitError` (429) / :class:`ServiceUnavailableError` (503).

        ``model`` is not limited here: the allow-list (403) is checked by the caller
        before, against the requested name and its alias target (``ApiKey.allows``)."""
        del model
        ip_rpm_key, ip_conc_key = self._ip_keys(ip)
        key_rpm, key_conc, bud_h, bud_z, bud_t = self._key_keys(key.id)
        token = secrets.token_hex(8)
        try:
            result = await self._call(
                self._admit,
                [ip_rpm_key, ip_conc_key, key_rpm, key_conc, bud_h, bud_z, bud_t],
                [
                    token,
                    self.ip_rpm,
                    self.ip_concurrency,
                    key.rpm_limit or 0,
                    key.concurrency_limit or 0,
                    key.budget_tokens or 0,
                    self.lease_ms,
                    RPM_WINDOW_MS,
                    self.budget_window_ms,
                    self.bucket_ms,
                ],
            )
        except (RedisError, OSError) as exc:
            raise _unavailable() from exc
        if int(result[0]) != 1:
            _, code, limit, reset_ms, retry_ms = (int(v) for v in result)
            retry = max(1, math.ceil(retry_ms / 1000))
            message = _REJECTIONS[code].format(limit=limit, retry=format_duration(retry))
            err = RateLimitError(
                message,
                headers={
                    "Retry-After": str(retry),
                    "X-RateLimit-Limit": str(limit),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(math.ceil(reset_ms / 1000)),
                },
            )
            err.limit = _LIMIT_NAMES.get(code, "other")
            raise err
        leases = []
        if self.ip_concurrency > 0:
            leases.append(ip_conc_key)
        if key.concurrency_limit:
            leases.append(key_conc)
        headers = {}
        if key.rpm_limit:
            headers = {
                "X-RateLimit-Limit": str(key.rpm_limit),
                "X-RateLimit-Remaining": str(max(0, int(result[1]))),
                "X-RateLimit-Reset": str(math.ceil(int(result[2]) / 1000)),
            }
        admission = Admission(
            token, tuple(leases), (ip_conc_key, key_conc, bud_h, bud_z, bud_t), headers
        )
        self._active[token] = admission
        return admission

    async def finish(self, admission: Admission, tokens_used: int) -> None:
        """Release the slots and add ``tokens_used`` to the key's rolling budget (one
        script call). Never raises: if Redis is unreachable the leases expire on their
        own and the tokens are not counted (logged)."""
        await self.finish_later(admission, tokens_used, urgent=True)

    def finish_later(
        self, admission: Admission, tokens_used: int, *, urgent: bool = False
    ) -> Coroutine[Any, Any, None]:
        """Queue the finish now (it reaches Redis before anything this process queues
        after it, e.g. the same key's next admit) and return what awaits it. Not urgent:
        it may wait a moment to share another request's round trip."""
        if admission.finished:
            return _nothing()
        admission.finished = True
        self._active.pop(admission.token, None)
        future = self._calls.submit(
            ScriptCall(
                self._finish,
                admission.finish_keys,
                [admission.token, max(0, tokens_used), self.budget_window_ms, self.bucket_ms],
            ),
            urgent=urgent,
        )
        return self._finished(future, tokens_used)

    async def _finished(self, future: asyncio.Future[Any], tokens_used: int) -> None:
        try:
            await future
        except (RedisError, OSError, RuntimeError) as exc:
            log.warning(
                "could not release limits (%s); leases expire in %d s, %d token(s) uncounted",
                type(exc).__name__,
                self.lease_ms // 1000,
                tokens_used,
            )

    async def refresh(self, admission: Admission | None = None) -> int:
        """Renew the leases of ``admission`` (default: every live admission of this
        process); returns how many were renewed. :meth:`refresh_loop` calls it."""
        admissions = [admission] if admission is not None else list(self._active.values())
        pairs = [(k, a.token) for a in admissions if not a.finished for k in a.lease_keys]
        renewed = 0
        for start in range(0, len(pairs), 256):
            chunk = pairs[start : start + 256]
            renewed += int(
                await self._refresh(
                    keys=[k for k, _ in chunk], args=[self.lease_ms, *(t for _, t in chunk)]
                )
            )
        return renewed

    async def refresh_loop(self) -> None:
        """Perpetual task: keep this node's leases alive while their requests run."""
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                log.warning("could not renew concurrency leases (%s)", type(exc).__name__)

    async def usage(self, key: ApiKey) -> KeyUsage:
        """The key's live counters (one round trip); 503 if Redis is unreachable."""
        key_rpm, key_conc, bud_h, bud_z, bud_t = self._key_keys(key.id)
        try:
            # Through the pipeline: finishes of this node still waiting go first.
            result = await self._call(
                self._status,
                [key_rpm, key_conc, bud_h, bud_z, bud_t],
                [RPM_WINDOW_MS, self.budget_window_ms, self.bucket_ms, key.budget_tokens or 0],
            )
        except (RedisError, OSError) as exc:
            raise _unavailable() from exc
        recent, flying, used, first, reset, now = (int(v) for v in result)
        return KeyUsage(
            requests_last_minute=recent,
            in_flight=flying,
            used_tokens=used,
            oldest_expires_in=(first - now) / 1000 if first else None,
            budget_resets_in=(reset - now) / 1000 if reset else None,
        )
