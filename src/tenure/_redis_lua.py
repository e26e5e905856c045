"""The Lua scripts of the Redis driver (also used by Redlock on each master).

Keys of one lock share the prefix ``<namespace>:{<kind>/<name>}:`` and so one hash tag (one
Cluster slot)::

    <p>holder        hash: owner, token, host, pid, acquired_at, value; expires after the TTL
    <p>token         fencing counter, bumped in the script that grants (never expires); a new
                     one starts at the server clock in microseconds (survives data loss)
    <p>queue         zset of waiting owner ids, scored by arrival (<p>seq)
    <p>w:<owner>     a waiter's liveness record (JSON), expires after the TTL unless refreshed
    <p>s:<owner>     a waiter's signal list: the releaser LPUSHes, the waiter BLPOPs

A release deletes the holder (if it is still ours) and wakes only the oldest live waiter; dead
waiters are dropped from the queue when their liveness record has expired.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "CHECK", "LEAVE", "RELEASE", "RENEW", "SET_VALUE"]

# Wakes the oldest live waiter of the queue KEYS[qi] (prefix p, signal ttl ms); drops dead ones.
_SIGNAL_NEXT = """
local function signal_next(queue, p, ttl)
  while true do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then return end
    if redis.call('EXISTS', p .. 'w:' .. head) == 1 then
      redis.call('LPUSH', p .. 's:' .. head, '1')
      redis.call('PEXPIRE', p .. 's:' .. head, ttl)
      return
    end
    redis.call('ZREM', queue, head)
    redis.call('DEL', p .. 's:' .. head)
  end
end
"""

#: KEYS: holder, token, queue, seq.
#: ARGV: owner, ttl_ms, host, pid, acquired_at, value_json, enqueue(0|1), prefix, channel,
#:       waiter_json.
#: Returns {granted(0|1), token, holder_pttl_ms}.
ACQUIRE = (
    _SIGNAL_NEXT
    + """
local owner, p = ARGV[1], ARGV[8]
local current = redis.call('HGET', KEYS[1], 'owner')
if current == owner then
  return {1, tonumber(redis.call('HGET', KEYS[1], 'token')), 0}
end
if not current then
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  while head and head ~= owner and redis.call('EXISTS', p .. 'w:' .. head) == 0 do
    redis.call('ZREM', KEYS[3], head)
    redis.call('DEL', p .. 's:' .. head)
    head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  end
  if not head or head == owner then
    if head then
      redis.call('ZREM', KEYS[3], owner)
      redis.call('DEL', p .. 'w:' .. owner, p .. 's:' .. owner)
    end
    if redis.call('EXISTS', KEYS[2]) == 0 then
      -- A new counter starts at the server's clock in microseconds, so tokens keep increasing
      -- even across a restart that lost the old counter (fewer than 10^6 grants a second).
      local now = redis.call('TIME')
      redis.call('SET', KEYS[2], string.format('%d', now[1] * 1000000 + now[2]))
    end
    local token = redis.call('INCR', KEYS[2])
    redis.call('HSET', KEYS[1], 'owner', owner, 'token', token, 'host', ARGV[3],
               'pid', ARGV[4], 'acquired_at', ARGV[5], 'value', ARGV[6])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    if ARGV[9] ~= '' then redis.call('PUBLISH', ARGV[9], token) end
    return {1, token, 0}
  end
  -- Free, but a live waiter is first: make sure it has been woken.
  signal_next(KEYS[3], p, ARGV[2])
end
if ARGV[7] == '1' then
  if not redis.call('ZSCORE', KEYS[3], owner) then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), owner)
  end
  redis.call('SET', p .. 'w:' .. owner, ARGV[10], 'PX', ARGV[2])
end
return {0, 0, redis.call('PTTL', KEYS[1])}
"""
)

#: KEYS: holder, queue. ARGV: owner, prefix, signal_ttl_ms, channel. Returns 1 if released.
RELEASE = (
    _SIGNAL_NEXT
    + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
signal_next(KEYS[2], ARGV[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], 0) end
return 1
"""
)

#: A waiter gives up (timeout, cancellation, error): leave the queue, drop a grant we may have
#: got without hearing the reply, and pass on a wake-up we may have swallowed.
#: KEYS: holder, queue. ARGV: owner, prefix, signal_ttl_ms, channel.
LEAVE = (
    _SIGNAL_NEXT
    + """
local owner, p = ARGV[1], ARGV[2]
redis.call('ZREM', KEYS[2], owner)
redis.call('DEL', p .. 'w:' .. owner, p .. 's:' .. owner)
local current = redis.call('HGET', KEYS[1], 'owner')
if current == owner then
  redis.call('DEL', KEYS[1])
  if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], 0) end
  current = false
end
if not current then signal_next(KEYS[2], p, ARGV[3]) end
return 1
"""
)

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

#: KEYS: holder. ARGV: owner, value_json, channel. Returns 1 if still ours.
SET_VALUE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'value', ARGV[2])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], 0) end
return 1
"""

#: KEYS: holder. ARGV: owner. Returns 1 if still ours.
CHECK = """
return redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and 1 or 0
"""
