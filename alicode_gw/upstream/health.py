"""Where the credential pool keeps its shared health in Redis, under
``{prefix}upstream:``, and the Lua scripts that change it (the keys are described in
:mod:`alicode_gw.upstream.pool`). Also what the CLI uses to reset a credential's
health and to make every node reload the table.
"""

from __future__ import annotations

from redis.asyncio import Redis

__all__ = [
    "FAIL_SCRIPT",
    "OK_SCRIPT",
    "announce_reload",
    "blame_key",
    "clear_health",
    "events_channel",
    "health_keys",
]


def events_channel(prefix: str) -> str:
    return f"{prefix}upstream:events"


def health_keys(prefix: str, cred_id: int) -> tuple[str, str, str]:
    """(cool, trip, probe) keys of one credential."""
    base = f"{prefix}upstream:"
    return f"{base}cool:{cred_id}", f"{base}trip:{cred_id}", f"{base}probe:{cred_id}"


def blame_key(prefix: str, cred_id: int) -> str:
    """The sorted set of customers that got a failure from one credential lately."""
    return f"{prefix}upstream:blame:{cred_id}"


# KEYS: cool, trip, probe, blame. ARGV: mode (fixed|backoff), ms (fixed) or base ms,
# cap ms, trip ttl ms, channel, message prefix, customer ('' = none), blame window ms,
# quorum. One cooldown episode counts once: a failure reported while the credential
# already cools only ever lengthens a fixed cooldown. A failure naming a customer cools
# only once `quorum` distinct customers failed within the window; else -1.
FAIL_SCRIPT = """
local current = redis.call('PTTL', KEYS[1])
local ms = tonumber(ARGV[2])
if current > 0 then
  if ARGV[1] == 'fixed' and ms > current then
    redis.call('SET', KEYS[1], ms, 'PX', ms)
    redis.call('PUBLISH', ARGV[5], ARGV[6] .. ms)
    return ms
  end
  return current
end
if ARGV[7] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local window = tonumber(ARGV[8])
  redis.call('ZADD', KEYS[4], now, ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[4], window)
  if redis.call('ZCARD', KEYS[4]) < tonumber(ARGV[9]) then return -1 end
end
local n = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if ARGV[1] == 'backoff' then
  ms = math.min(ms * 2 ^ (n - 1), tonumber(ARGV[3]))
end
ms = math.floor(ms)
redis.call('SET', KEYS[1], ms, 'PX', ms)
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ms)
return ms
"""

# KEYS: cool, trip, probe. ARGV: channel, message. A success while the cooldown still
# runs (a request that started before the failure) does not end it.
OK_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""


async def clear_health(redis: Redis, prefix: str, cred_id: int) -> None:
    """Forget a credential's cooldown and failure streak (operator re-enable)."""
    await redis.delete(*health_keys(prefix, cred_id), blame_key(prefix, cred_id))


async def announce_reload(redis: Redis, prefix: str) -> None:
    """Tell every node to re-read the credentials table now."""
    await redis.publish(events_channel(prefix), "reload")
