"""The limiter's Lua scripts (:mod:`alicode_gw.limits.limiter` runs them with EVALSHA).

Times are Redis's own (``TIME``, in ms); every script is atomic, so limits hold exactly
however many nodes call at once.
"""

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

# KEYS: ip rpm, ip conc, key rpm, key conc, budget hash, budget index, budget total,
#       budget reservations
# ARGV: token, ip_rpm, ip_conc, key_rpm, key_conc, budget, lease_ms, rpm_win, bud_win, bucket,
#       share_pct, ip_want, key_want, reserve_ms, ip_entry, key_entry, reservation
#   (a limit of 0 is not checked here: off, or taken from the node's share; *_entry, if
#   not empty, is the reserved entry the node took for it: it is counted from now on;
#   reservation, if not empty, is "<token>:<worst-case tokens>", added to the budget's
#   reservations with a lease like a concurrency slot's)
# -> {1, key_rpm_left, key_rpm_reset_ms, now, ip_granted, key_granted, ip_rpm_left,
#     ip_rpm_reset_ms} or {0, code, limit, reset_ms, retry_ms}
# The budget admits while the tokens counted in the window plus the worst cases reserved
# by the key's requests in flight are under it (code 5: the counted tokens alone reach
# it; code 6: the reservations make up the rest); so its requests exceed it by at most
# one request's worst case.
# A granted count of extra minute-log entries were reserved for the node, as members
# token:1 .. token:n scored now + reserve_ms; *_left is what the limit has left after them.
ADMIT_LUA = (
    _PRELUDE
    + """
local token, budget = ARGV[1], tonumber(ARGV[6])
local lease, rpm_win = tonumber(ARGV[7]), tonumber(ARGV[8])
local bud_win, bucket = tonumber(ARGV[9]), tonumber(ARGV[10])
local share, reserve = tonumber(ARGV[11]), tonumber(ARGV[14])

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

local n, reset, got = {0, 0}, {now + rpm_win, now + rpm_win}, {0, 0}
for s = 1, 2 do  -- the IP's limits, then the key's
  local rpm, conc = tonumber(ARGV[2 * s]), tonumber(ARGV[2 * s + 1])
  if rpm > 0 then
    n[s], reset[s] = window(KEYS[2 * s - 1])
    if n[s] >= rpm then return {0, 2 * s - 1, rpm, reset[s], reset[s] - now} end
  end
  if conc > 0 and leases(KEYS[2 * s]) >= conc then
    return {0, 2 * s, conc, now + 1000, 1000}
  end
end
if budget > 0 then
  local used = budget_used(KEYS[5], KEYS[6], KEYS[7], bud_win, bucket)
  if used >= budget then
    local reset = budget_reset(KEYS[5], KEYS[6], used, budget, bud_win, bucket)
    if reset <= now then reset = now + bucket end
    return {0, 5, budget, reset, reset - now}
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now)
  local reserved = 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[8], 0, -1)) do
    reserved = reserved + tonumber(string.match(m, ':(%d+)$') or '0')
  end
  if used + reserved >= budget then
    return {0, 6, budget, now + 1000, 1000}
  end
end

-- the request's own entry, then up to `want` more for the node (share % of what is left)
for s = 1, 2 do
  local rpm, conc = tonumber(ARGV[2 * s]), tonumber(ARGV[2 * s + 1])
  if rpm > 0 then
    local key, want = KEYS[2 * s - 1], tonumber(ARGV[11 + s])
    redis.call('ZADD', key, now, token)
    got[s] = math.max(0, math.min(want, math.floor((rpm - n[s] - 1) * share / 100)))
    for i = 1, got[s] do redis.call('ZADD', key, now + reserve, token .. ':' .. i) end
    redis.call('PEXPIRE', key, rpm_win + reserve)
  end
  if conc > 0 then
    redis.call('ZADD', KEYS[2 * s], now + lease, token)
    redis.call('PEXPIRE', KEYS[2 * s], lease)
  end
  if ARGV[14 + s] ~= '' then
    redis.call('ZADD', KEYS[2 * s - 1], 'XX', now, ARGV[14 + s])
  end
end
if budget > 0 and ARGV[17] ~= '' then
  redis.call('ZADD', KEYS[8], now + lease, ARGV[17])
  redis.call('PEXPIRE', KEYS[8], lease)
end
local ip_rpm, key_rpm = tonumber(ARGV[2]), tonumber(ARGV[4])
return {1, key_rpm - n[2] - 1 - got[2], reset[2], now, got[1], got[2],
        ip_rpm - n[1] - 1 - got[1], reset[1]}
"""
)

# KEYS: budget hash, budget index, budget total, then one set per member to remove
# ARGV: tokens used, bud_win, bucket, then the members (ARGV[i] leaves KEYS[i], i > 3)
FINISH_LUA = """
for i = 4, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[i])
end
local n = tonumber(ARGV[1])
if n > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local bud_win, bucket = tonumber(ARGV[2]), tonumber(ARGV[3])
  local b = now - (now % bucket)
  redis.call('HINCRBY', KEYS[1], b, n)
  redis.call('ZADD', KEYS[2], 'NX', b, b)
  redis.call('INCRBY', KEYS[3], n)
  local ttl = bud_win + 2 * bucket
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return 1
"""

# KEYS: lease sets, ARGV: lease_ms, then the token held in each KEYS[i]
# -> for each, 1 if it was renewed, 0 if the set no longer had it
REFRESH_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local found = {}
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[i + 1]) then
    redis.call('ZADD', key, now + lease, ARGV[i + 1])
    redis.call('PEXPIRE', key, lease)
    found[i] = 1
  else
    found[i] = 0
  end
end
return found
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
