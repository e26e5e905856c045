"""The Lua scripts of the Redis driver (also used by Redlock on each master).

Keys of one lock share the prefix ``<namespace>:{<kind>/<name>}:`` and so one hash tag (one
Cluster slot)::

    <p>holder        hash: owner, token, meta, at (server time, µs), [value]; expires after the TTL
    <p>token         fencing counter, bumped in the script that grants (never expires); a new
                     one starts at the server clock in microseconds (survives data loss)
    <p>queue         zset of waiting owner ids, scored by arrival (<p>seq)
    <p>w:<owner>     a waiter's record "<ttl_ms> <meta>", expires after the TTL unless refreshed
    <p>s:<owner>     a waiter's signal list: the granting script pushes "<token> <at>", the waiter
                     BLPOPs it
    <p>changes       pub/sub channel, elections only (flag ``e``)

``meta`` is the contender's JSON ``{"host", "pid", "value"}``, one string the scripts copy and
never parse. A release (or a waiter that leaves, or an acquire that finds the lock free with a
live waiter first) **grants directly** to the oldest live waiter: it makes that waiter the holder
with its own TTL, bumps the token, and pushes the grant onto the waiter's signal list, so the
woken waiter returns without another round trip. Waiters whose record expired are dropped on the
way. The prefix ``<p>`` is the holder key less its ``holder`` suffix.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "CHECK", "LEAVE", "RAISE", "RELEASE", "RENEW", "SET_VALUE"]

_COMMON = """
local function prefix_of(holder_key) return string.sub(holder_key, 1, -7) end

local function channel_of(p, flags)
  if string.find(flags, 'e', 1, true) then return p .. 'changes' end
  return nil
end

local function now_us()
  local t = redis.call('TIME')
  return t[1] * 1000000 + t[2]
end

-- Make `owner` the holder: bump the fencing counter (a new counter starts at the server's clock
-- in microseconds, so tokens keep increasing even across a restart that lost the old counter, at
-- fewer than 10^6 grants a second), write the holder record, set its TTL.
local function grant(holder, tokens, owner, ttl, meta, now, channel)
  local token = redis.call('INCR', tokens)
  if token == 1 then
    token = now + 1
    redis.call('SET', tokens, string.format('%d', token))
  end
  redis.call('HSET', holder, 'owner', owner, 'token', string.format('%d', token), 'meta', meta,
             'at', string.format('%d', now))
  redis.call('PEXPIRE', holder, ttl)
  if channel then redis.call('PUBLISH', channel, token) end
  return token
end

-- The oldest waiter whose record is alive, and its record; dead ones are dropped on the way.
local function live_head(queue, p)
  while true do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then return nil, nil end
    local record = redis.call('GET', p .. 'w:' .. head)
    if record then return head, record end
    redis.call('ZREM', queue, head)
    redis.call('DEL', p .. 's:' .. head)
  end
end

-- Grant the (free) lock to waiter `head` and push the grant onto its signal list.
local function hand_over(holder, tokens, queue, p, head, record, channel)
  local sep = string.find(record, ' ', 1, true)
  local ttl = string.sub(record, 1, sep - 1)
  redis.call('ZREM', queue, head)
  redis.call('DEL', p .. 'w:' .. head)
  local now = now_us()
  local token = grant(holder, tokens, head, ttl, string.sub(record, sep + 1), now, channel)
  local signal = p .. 's:' .. head
  redis.call('RPUSH', signal, string.format('%d %d', token, now))
  redis.call('PEXPIRE', signal, ttl)
end

-- The lock is free: grant it to the oldest live waiter, if any (Redis). Redlock (flags "w")
-- only wakes that waiter with a "w" on its list, for it must win a quorum itself; with flags
-- "n" (a Redlock contender giving back a partial grant) nobody is woken.
local function grant_next(holder, tokens, queue, p, channel, flags)
  if string.find(flags, 'n', 1, true) then return end
  local head, record = live_head(queue, p)
  if not head then return end
  if string.find(flags, 'w', 1, true) then
    local signal = p .. 's:' .. head
    redis.call('RPUSH', signal, 'w')
    redis.call('PEXPIRE', signal, string.sub(record, 1, string.find(record, ' ', 1, true) - 1))
  else
    hand_over(holder, tokens, queue, p, head, record, channel)
  end
end
"""

#: KEYS: holder, token, queue, seq.
#: ARGV: owner, ttl_ms, meta, flags ("q": queue if not granted; "e": publish changes; "n":
#: Redlock, the queue only orders wake-ups, so a free lock goes to whoever asks).
#: Returns {1, token, at_us} when granted, else {0, 0, holder_pttl_ms}.
ACQUIRE = (
    _COMMON
    + """
local owner, ttl, flags = ARGV[1], ARGV[2], ARGV[4]
local p = prefix_of(KEYS[1])
local current = redis.call('HGET', KEYS[1], 'owner')
if current == owner then
  -- Ours already: an earlier attempt whose reply was lost, or a grant pushed to us meanwhile.
  redis.call('DEL', p .. 's:' .. owner)
  local record = redis.call('HMGET', KEYS[1], 'token', 'at')
  return {1, tonumber(record[1]), tonumber(record[2])}
end
local channel = channel_of(p, flags)
if not current and string.find(flags, 'n', 1, true) then
  redis.call('ZREM', KEYS[3], owner)
  redis.call('DEL', p .. 'w:' .. owner, p .. 's:' .. owner)
  local now = now_us()
  return {1, grant(KEYS[1], KEYS[2], owner, ttl, ARGV[3], now, channel), now}
end
if not current then
  local head, record = live_head(KEYS[3], p)
  if not head or head == owner then
    if head then
      redis.call('ZREM', KEYS[3], owner)
      redis.call('DEL', p .. 'w:' .. owner, p .. 's:' .. owner)
    end
    local now = now_us()
    return {1, grant(KEYS[1], KEYS[2], owner, ttl, ARGV[3], now, channel), now}
  end
  -- Free, but a live waiter is first (its holder expired): it gets the lock.
  hand_over(KEYS[1], KEYS[2], KEYS[3], p, head, record, channel)
end
if string.find(flags, 'q', 1, true) then
  if not redis.call('ZSCORE', KEYS[3], owner) then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), owner)
  end
  redis.call('SET', p .. 'w:' .. owner, ttl .. ' ' .. ARGV[3], 'PX', ttl)
end
return {0, 0, redis.call('PTTL', KEYS[1])}
"""
)

#: KEYS: holder, token, queue. ARGV: owner, flags ("e": publish changes; "w"/"n": Redlock, see
#: grant_next). Returns 1 if released (and granted to the next live waiter, if any), 0 if it was
#: not ours.
RELEASE = (
    _COMMON
    + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local p = prefix_of(KEYS[1])
local channel = channel_of(p, ARGV[2])
if channel then redis.call('PUBLISH', channel, 0) end
grant_next(KEYS[1], KEYS[2], KEYS[3], p, channel, ARGV[2])
return 1
"""
)

#: A waiter gives up (timeout, cancellation, error): leave the queue, give back a grant that was
#: made (or pushed) to us meanwhile, and if the lock is free, grant it to the next live waiter.
#: KEYS: holder, token, queue. ARGV: owner, flags.
LEAVE = (
    _COMMON
    + """
local owner = ARGV[1]
local p = prefix_of(KEYS[1])
local channel = channel_of(p, ARGV[2])
redis.call('ZREM', KEYS[3], owner)
redis.call('DEL', p .. 'w:' .. owner, p .. 's:' .. owner)
local current = redis.call('HGET', KEYS[1], 'owner')
if current == owner then
  redis.call('DEL', KEYS[1])
  if channel then redis.call('PUBLISH', channel, 0) end
  current = false
end
if not current then grant_next(KEYS[1], KEYS[2], KEYS[3], p, channel, ARGV[2]) end
return 1
"""
)

#: Redlock's fencing step: raise this master's counter (and our holder record's token) to the
#: token chosen from a quorum's counters, if we still hold the entry here.
#: KEYS: holder, token. ARGV: owner, token. Returns 1 if done, 0 if the entry is not ours.
RAISE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
end
redis.call('HSET', KEYS[1], 'token', ARGV[2])
return 1
"""

#: KEYS: the session's holder keys. ARGV: ttl_ms, then each key's owner.
#: Returns the 1-based indexes of the keys that are no longer ours.
RENEW = """
local lost = {}
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'owner') == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

#: KEYS: holder. ARGV: owner, value_json, flags. Returns 1 if still ours.
SET_VALUE = (
    _COMMON
    + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'value', ARGV[2])
local channel = channel_of(prefix_of(KEYS[1]), ARGV[3])
if channel then redis.call('PUBLISH', channel, 0) end
return 1
"""
)

#: KEYS: holder. ARGV: owner. Returns 1 if still ours.
CHECK = """
return redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and 1 or 0
"""
