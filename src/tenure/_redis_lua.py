"""The Lua scripts of the Redis driver (also used by Redlock on each master).

Keys of one name share the prefix ``<p>`` = ``<namespace>:{<kind>/<name>}:`` and so one hash
tag (one Cluster slot)::

    <p>holder        hash: the exclusive holder (a lock's, an election's, an rwlock's writer):
                     owner, token, meta, at (server time, µs), [value]; expires after the TTL
    <p>shared        zset: the shared holders (an rwlock's readers, a semaphore's permits),
                     owner -> deadline (server time, ms). An entry is live while its deadline is
                     ahead (Redis 6/7 cannot expire a member): the scripts drop expired ones, and
                     the key itself expires a second after its latest deadline
    <p>h:<owner>     hash: a shared holder's record: owner, token, meta, at, mode, limit;
                     expires a second after its deadline
    <p>token         fencing counter, set by every grant of any mode to max(counter + 1, server
                     clock in µs) (never expires; tokens never go back across a failover or a
                     restart that lost recent writes, see ``grant``)
    <p>queue         zset of waiting owner ids, scored by arrival (<p>seq; Redlock: the
                     contender's arrival on the masters' clock, the same on every master)
    <p>w:<owner>     a waiter's record "<ttl_ms> <mode> <limit> <meta>", expires after the TTL
                     unless refreshed
    <p>s:<owner>     a waiter's signal list: the granting script pushes "<token> <at>", the waiter
                     BLPOPs it
    <p>changes       pub/sub channel, elections only (flag ``e``)

A mode is ``x`` (exclusive), ``s`` (shared) or ``p`` (a permit, with a limit >= 1; 0 otherwise).
A key has either one exclusive holder or shared ones, never both. ``meta`` is the contender's
JSON ``{"host", "pid", "value"}``, one string the scripts copy and never parse. The prefix is
every script's ``KEYS[1]`` less its six-letter suffix (``holder`` or ``shared``).

**One queue, one rule** (``advance``): the waiters at the head of the queue are granted while
``base.grantable`` allows, in arrival order: one exclusive waiter when nobody holds the key, or
the run of shared waiters that fits (no exclusive holder, fewer than ``limit`` holders). A plain
lock is the case where every contender is exclusive. A release (or a waiter that leaves, or an
acquire that finds a holder expired) **grants directly**: the waiter becomes a holder with its
own TTL and a new token, and the grant is pushed onto its signal list, so the woken waiter
returns without another round trip. Waiters whose record expired are dropped on the way.

A semaphore's limit is the limit of its live contenders (every holder and waiter record carries
it): an acquire with another limit gets ``{-1, stored_limit, 0}`` and changes nothing.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "CHECK", "INSPECT", "LEAVE", "RAISE", "RELEASE", "RENEW", "SET_VALUE"]

_COMMON = """
local function prefix_of(key) return string.sub(key, 1, -7) end

local function channel_of(p, flags)
  if string.find(flags, 'e', 1, true) then return p .. 'changes' end
  return nil
end

-- The server clock, read once per script and only if needed (the hot paths may not need it).
local clock = nil
local function now_us()
  if not clock then
    local t = redis.call('TIME')
    clock = t[1] * 1000000 + t[2]
  end
  return clock
end
local function now_ms() return math.floor(now_us() / 1000) end

-- The number of live shared holders; expired ones are dropped on the way.
local function shared_count(p)
  local shared = p .. 'shared'
  if redis.call('EXISTS', shared) == 0 then return 0 end
  for _, owner in ipairs(redis.call('ZRANGEBYSCORE', shared, '-inf', now_ms())) do
    redis.call('ZREM', shared, owner)
    redis.call('DEL', p .. 'h:' .. owner)
  end
  return redis.call('ZCARD', shared)
end

-- Who holds the key: an exclusive holder (true, 0), or (false, the number of shared holders).
local function holders(p)
  if redis.call('EXISTS', p .. 'holder') == 1 then return true, 0 end
  return false, shared_count(p)
end

-- base.grantable for a contender with no live waiter before it.
local function grantable(mode, limit, exclusive, count)
  if exclusive then return false end
  if mode == 'x' then return count == 0 end
  return limit == 0 or count < limit
end

-- Keep shared holder `owner` live for `ttl` ms more. Its deadline decides; its record and the
-- zset are only garbage once every deadline passed, so they expire a second after it.
local function keep_shared(p, owner, ttl)
  local shared = p .. 'shared'
  redis.call('ZADD', shared, now_ms() + ttl, owner)
  redis.call('PEXPIRE', p .. 'h:' .. owner, ttl + 1000)
  if redis.call('PTTL', shared) < ttl + 1000 then redis.call('PEXPIRE', shared, ttl + 1000) end
end

-- Make `owner` a holder in `mode`: the token is max(counter + 1, server clock in µs), stored back
-- in the counter. Tokens so track the clock: a server that lost the counter (restart without
-- persistence) or holds an older one (a promoted replica that missed the last writes, a restore)
-- still hands out a token above every earlier one, provided its clock is ahead of the clock
-- that granted them (offset between nodes below the failover time). Redlock rounds the clock
-- down to `step` µs (10 ms), so that masters in step bump to the same token and its raise step
-- is rarely needed. Write its record, set its TTL.
local function grant(p, owner, mode, limit, ttl, meta, channel, step)
  local now = now_us()
  local counter = tonumber(redis.call('GET', p .. 'token'))
  local token = counter and math.max(counter + 1, now - now % step) or now + 1
  local t, at = string.format('%d', token), string.format('%d', now)
  redis.call('SET', p .. 'token', t)
  if mode == 'x' then
    redis.call('HSET', p .. 'holder', 'owner', owner, 'token', t, 'meta', meta, 'at', at)
    redis.call('PEXPIRE', p .. 'holder', ttl)
  else
    redis.call('HSET', p .. 'h:' .. owner, 'owner', owner, 'token', t, 'meta', meta, 'at', at,
               'mode', mode, 'limit', limit)
    keep_shared(p, owner, tonumber(ttl))
  end
  if channel then redis.call('PUBLISH', channel, token) end
  return token
end

-- The record (holder or h:<owner>) of `owner`'s live entry, or nil (`shared`: look there too);
-- then whether anyone holds the key exclusively.
local function entry_of(p, owner, shared)
  local record = p .. 'holder'
  local current = redis.call('HGET', record, 'owner')
  if current == owner then return record, true end
  if shared then
    local deadline = redis.call('ZSCORE', p .. 'shared', owner)
    if deadline and tonumber(deadline) > now_ms() then return p .. 'h:' .. owner, false end
  end
  return nil, current ~= false
end

-- Delete `owner`'s entry; true if it was live ('x' if it was the exclusive holder's: then the
-- key is held by nobody now, for an exclusive holder and shared ones never coexist).
local function drop(p, owner)
  if redis.call('HGET', p .. 'holder', 'owner') == owner then
    redis.call('DEL', p .. 'holder')
    return 'x'
  end
  local deadline = redis.call('ZSCORE', p .. 'shared', owner)
  if not deadline then return false end
  redis.call('ZREM', p .. 'shared', owner)
  redis.call('DEL', p .. 'h:' .. owner)
  return tonumber(deadline) > now_ms()
end

-- The live waiter at position `at` of the queue and its record (ttl, mode, limit, meta); dead
-- ones there are dropped on the way.
local function live_waiter(p, at)
  local queue = p .. 'queue'
  while true do
    local head = redis.call('ZRANGE', queue, at, at)[1]
    if not head then return nil end
    local record = redis.call('GET', p .. 'w:' .. head)
    if record then
      local ttl, mode, limit, meta = string.match(record, '^(%d+) (%a) (%d+) (.*)$')
      return head, ttl, mode, tonumber(limit), meta
    end
    redis.call('ZREM', queue, head)
    redis.call('DEL', p .. 's:' .. head)
  end
end

-- The one queue: grant the waiters at its head while the rule allows (one exclusive waiter, or
-- the run of shared ones that fits), each with its own TTL, pushing "<token> <at>" onto each
-- one's signal list; `caller`, if among them, is granted without a push. how = 'grant' (Redis),
-- 'wake' (Redlock: push a "w" instead, for each must win a quorum itself, and so stays queued),
-- or 'look' (change nothing). Returns the caller's token (or nil), then (only if anyone is
-- queued) whether an exclusive holder holds the key, the number of shared holders, and the
-- first live waiter left with its mode and limit. `free`: the caller knows nobody holds the
-- key (a release of the exclusive holder), so it is not looked up; and with no caller nothing
-- is returned, so once an exclusive grant closes the key the next waiter is not looked up.
local function advance(p, channel, how, caller, free)
  local head, ttl, mode, limit, meta = live_waiter(p, 0)
  if not head then return nil end
  local exclusive, count = false, 0
  if not free then exclusive, count = holders(p) end
  local at, mine = 0, nil
  while head and how ~= 'look' and grantable(mode, limit, exclusive, count) do
    if how == 'wake' then
      local signal = p .. 's:' .. head
      redis.call('RPUSH', signal, 'w')
      redis.call('PEXPIRE', signal, ttl)
      at = at + 1
    else
      redis.call('ZREM', p .. 'queue', head)
      redis.call('DEL', p .. 'w:' .. head)
      local token = grant(p, head, mode, limit, ttl, meta, channel, 1)
      if head == caller then
        mine = token
      else
        local signal = p .. 's:' .. head
        redis.call('RPUSH', signal, string.format('%d %d', token, now_us()))
        redis.call('PEXPIRE', signal, ttl)
      end
    end
    if mode == 'x' then
      exclusive = true
      if not caller then return nil end  -- nobody else can be granted, nobody asks who is next
    else
      count = count + 1
    end
    head, ttl, mode, limit, meta = live_waiter(p, at)
  end
  return mine, exclusive, count, head, mode, limit
end

-- Redlock: may `owner`, which arrived at `score` (µs of the masters' clock, the same number on
-- every master: the contender sends it), take the key now? Only if the rule allows it after
-- every live waiter that arrived before it (ties by owner id), each let go first in that order.
-- The order is the same on every master, so the earliest live waiter is first wherever it is
-- queued: no two masters' queues can hold each other up, and nobody overtakes a waiter.
local function turn(p, owner, score, mode, limit, exclusive, count)
  local queue = p .. 'queue'
  local at = 0
  while true do
    local head, _, head_mode, head_limit = live_waiter(p, at)
    if not head or head == owner then break end
    local head_score = tonumber(redis.call('ZSCORE', queue, head))
    if head_score > score or (head_score == score and head > owner) then break end
    if not grantable(head_mode, head_limit, exclusive, count) then return false end
    if head_mode == 'x' then exclusive = true else count = count + 1 end
    at = at + 1
  end
  return grantable(mode, limit, exclusive, count)
end
"""

#: KEYS: holder. ARGV: owner, ttl_ms, meta, flags, mode (x/s/p), limit, [arrival]. Flags: "q"
#: queue if not granted; "e" publish changes; "n" Redlock: nobody is granted here directly (each
#: must win a quorum itself), so the key goes to whoever asks when the rule allows it after the
#: waiters that arrived before it (``turn``); the queue is ordered by ``arrival`` (µs, the same
#: number on every master), not by this master's ``seq``.
#: Returns {1, token, at_us} when granted; {0, 0 (Redlock: the server clock, µs), ms until the
#: first holder expires} when not; {-1, stored_limit, 0} when a semaphore's stored limit differs
#: from ours.
ACQUIRE = (
    _COMMON
    + """
local owner, ttl, meta, flags, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit = tonumber(ARGV[6])
local p = prefix_of(KEYS[1])
local mine, exclusive = entry_of(p, owner, mode ~= 'x')
if mine then
  -- Ours already: an earlier attempt whose reply was lost, or a grant pushed to us meanwhile.
  redis.call('DEL', p .. 's:' .. owner)
  local record = redis.call('HMGET', mine, 'token', 'at')
  return {1, tonumber(record[1]), tonumber(record[2])}
end
local channel = channel_of(p, flags)
local redlock = string.find(flags, 'n', 1, true)
-- Redis: grant whoever the queue's order allows first (a holder may have expired since).
local token, now_exclusive, count, head, head_mode, head_limit =
  advance(p, channel, redlock and 'look' or 'grant', owner)
if token then
  redis.call('DEL', p .. 's:' .. owner)
  return {1, token, now_us()}
end
if now_exclusive ~= nil then
  exclusive = now_exclusive
elseif not exclusive then  -- nobody queued: the holders are as we found them
  count = shared_count(p)
end
if mode == 'p' then
  local first = redis.call('ZRANGE', p .. 'shared', 0, 0)[1]
  local stored = head_limit
  if first then stored = tonumber(redis.call('HGET', p .. 'h:' .. first, 'limit')) end
  if stored and stored ~= limit then return {-1, stored, 0} end
end
local free = grantable(mode, limit, exclusive, count)
if redlock then
  -- With nobody queued (no live head) the rule alone decides: `turn` would find no one before
  -- us, and we are not queued here to leave the queue.
  if free and head then
    local arrival = tonumber(redis.call('ZSCORE', p .. 'queue', owner) or ARGV[7])
    free = turn(p, owner, arrival, mode, limit, exclusive, count)
    if free and redis.call('ZREM', p .. 'queue', owner) == 1 then
      redis.call('DEL', p .. 'w:' .. owner, p .. 's:' .. owner)
    end
  end
else
  free = free and not head
end
if free then
  local token = grant(p, owner, mode, limit, ttl, meta, channel, redlock and 10000 or 1)
  return {1, token, now_us()}
end
if string.find(flags, 'q', 1, true) then
  if redlock then
    redis.call('ZADD', p .. 'queue', 'NX', ARGV[7], owner)
  elseif not redis.call('ZSCORE', p .. 'queue', owner) then
    redis.call('ZADD', p .. 'queue', redis.call('INCR', p .. 'seq'), owner)
  end
  redis.call('SET', p .. 'w:' .. owner, ttl .. ' ' .. mode .. ' ' .. limit .. ' ' .. meta,
             'PX', ttl)
end
-- Wake by the time the first holder expires.
local pttl = redis.call('PTTL', p .. 'holder')
if pttl < 0 then
  local first = redis.call('ZRANGE', p .. 'shared', 0, 0, 'WITHSCORES')[2]
  pttl = first and tonumber(first) - now_ms() or 0
end
return {0, redlock and now_us() or 0, pttl}
"""
)

#: The release path. KEYS: holder. ARGV: owner, flags ("e": publish changes; "w": Redlock,
#: wake instead of grant), [hold_ms]. Returns 1 if our entry was live and is deleted (and the
#: waiters that may now go are granted), 0 if it was not ours. With hold_ms > 0 (``min_hold``
#: not yet over) the entry is kept instead, marked ``ended``, and expires in hold_ms by the
#: server's own clock: waiters go when it expires (the acquire script told them when).
RELEASE = (
    _COMMON
    + """
local p = prefix_of(KEYS[1])
local hold = tonumber(ARGV[3] or '0')
if hold > 0 then
  local owner = ARGV[1]
  if redis.call('HGET', p .. 'holder', 'owner') == owner then
    redis.call('HSET', p .. 'holder', 'ended', '1')
    redis.call('PEXPIRE', p .. 'holder', hold)
  else
    local deadline = redis.call('ZSCORE', p .. 'shared', owner)
    if not deadline or tonumber(deadline) <= now_ms() then return 0 end
    redis.call('HSET', p .. 'h:' .. owner, 'ended', '1')
    keep_shared(p, owner, hold)
  end
  -- Wake the first waiter ("w": no grant): it asks again and learns when the hold ends.
  local head, ttl = live_waiter(p, 0)
  if head then
    redis.call('RPUSH', p .. 's:' .. head, 'w')
    redis.call('PEXPIRE', p .. 's:' .. head, ttl)
  end
  return 1
end
local dropped = drop(p, ARGV[1])
if not dropped then return 0 end
local channel = channel_of(p, ARGV[2])
if channel then redis.call('PUBLISH', channel, 0) end
advance(p, channel, string.find(ARGV[2], 'w', 1, true) and 'wake' or 'grant', nil,
        dropped == 'x')
return 1
"""
)

#: A waiter gives up (timeout, cancellation, error): leave the queue, give back a grant that was
#: made (or pushed) to us meanwhile, and pass the key on. KEYS: holder. ARGV: owner, flags.
LEAVE = (
    _COMMON
    + """
local owner = ARGV[1]
local p = prefix_of(KEYS[1])
redis.call('ZREM', p .. 'queue', owner)
redis.call('DEL', p .. 'w:' .. owner, p .. 's:' .. owner)
local channel = channel_of(p, ARGV[2])
if drop(p, owner) and channel then redis.call('PUBLISH', channel, 0) end
advance(p, channel, string.find(ARGV[2], 'w', 1, true) and 'wake' or 'grant', nil)
return 1
"""
)

#: Redlock's fencing step: raise this master's counter and our entry's token to the token chosen
#: from a quorum's counters. Refused (0) where the counter already reached it: another grant took
#: that value or passed it here meanwhile (two shared contenders of different quorums that picked
#: the same maximum: only one of them can be confirmed on a quorum), or the entry is not ours.
#: KEYS: holder. ARGV: owner, token. Returns 1 if done.
RAISE = (
    _COMMON
    + """
local owner, token = ARGV[1], tonumber(ARGV[2])
local p = prefix_of(KEYS[1])
local record = p .. 'holder'
if redis.call('HGET', record, 'owner') ~= owner then
  if not redis.call('ZSCORE', p .. 'shared', owner) then return 0 end
  record = p .. 'h:' .. owner
end
if tonumber(redis.call('GET', p .. 'token') or '0') >= token then return 0 end
redis.call('SET', p .. 'token', ARGV[2])
redis.call('HSET', record, 'token', ARGV[2])
return 1
"""
)

#: KEYS: the session's entries: <p>holder for an exclusive one, <p>shared for a shared one.
#: ARGV: ttl_ms, then each entry's owner. Returns the 1-based indexes of those no longer ours.
RENEW = (
    _COMMON
    + """
local ttl = tonumber(ARGV[1])
local lost = {}
for i = 1, #KEYS do
  local key, owner = KEYS[i], ARGV[i + 1]
  -- (An entry released under min_hold is 'ended': its hold is not extended, nor reported lost
  -- in error: a renewal sent before the release may arrive after it.)
  if string.sub(key, -6) == 'holder' then
    if redis.call('HGET', key, 'owner') == owner then
      if redis.call('HEXISTS', key, 'ended') == 0 then redis.call('PEXPIRE', key, ttl) end
    else
      lost[#lost + 1] = i
    end
  else
    local deadline = redis.call('ZSCORE', key, owner)
    if deadline and tonumber(deadline) > now_ms() then
      if redis.call('HEXISTS', prefix_of(key) .. 'h:' .. owner, 'ended') == 0 then
        keep_shared(prefix_of(key), owner, ttl)
      end
    else
      lost[#lost + 1] = i
    end
  end
end
return lost
"""
)

#: KEYS: holder. ARGV: owner, value_json, flags. Returns 1 if still ours (elections: exclusive).
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

#: KEYS: the entry (<p>holder or <p>shared, as for RENEW). ARGV: owner. Returns 1 if still ours.
CHECK = (
    _COMMON
    + """
if string.sub(KEYS[1], -6) == 'holder' then
  return redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and 1 or 0
end
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
return (deadline and tonumber(deadline) > now_ms()) and 1 or 0
"""
)

#: Read-only: everyone on the key. KEYS: holder. Returns {holders, waiters, limit}: each holder
#: is {owner, token, at_us, expires_ms, mode, meta, value or false, ended (0/1)}, the exclusive
#: one first,
#: then the shared ones; each live waiter {owner, mode, meta}, in arrival order; the limit of a
#: semaphore's contenders (else 0).
INSPECT = (
    _COMMON
    + """
local p = prefix_of(KEYS[1])
local ms = now_ms()
local found, waiting, limit = {}, {}, 0
local r = redis.call('HMGET', p .. 'holder', 'owner', 'token', 'at', 'meta', 'value', 'ended')
if r[1] then
  found[1] = {r[1], r[2], r[3], redis.call('PTTL', p .. 'holder'), 'x', r[4], r[5], r[6] and 1 or 0}
end
local shared = redis.call('ZRANGEBYSCORE', p .. 'shared', '(' .. ms, '+inf', 'WITHSCORES')
for i = 1, #shared, 2 do
  r = redis.call('HMGET', p .. 'h:' .. shared[i], 'token', 'at', 'meta', 'mode', 'limit', 'ended')
  if r[1] then
    found[#found + 1] = {shared[i], r[1], r[2], tonumber(shared[i + 1]) - ms, r[4], r[3], false,
                         r[6] and 1 or 0}
    limit = tonumber(r[5])
  end
end
for _, owner in ipairs(redis.call('ZRANGE', p .. 'queue', 0, -1)) do
  local record = redis.call('GET', p .. 'w:' .. owner)
  if record then
    local _, mode, their_limit, meta = string.match(record, '^(%d+) (%a) (%d+) (.*)$')
    waiting[#waiting + 1] = {owner, mode, meta}
    if limit == 0 then limit = tonumber(their_limit) end
  end
end
return {found, waiting, limit}
"""
)
