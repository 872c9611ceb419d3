-- reserve.lua: the fast path, and the re-check inside the purchase lock (docs/DESIGN.md, section 5, steps 1 and 3).
--
-- Atomically: look at the job's state, honour cancellation and opt-outs, pick a number with capacity (the
-- recipient's sticky sender first, then the customer's numbers in purchase order starting at the fill cursor),
-- and reserve one slot in that number's window at Redis time. A separate read-then-write would over-admit under
-- concurrency; doing it all here is what keeps invariant 2 (no quota overrun).
--
-- In 'locked' mode the caller holds the customer's purchase lock. If there is still no capacity, no purchase in
-- flight, no orphaned reservation and room under max_numbers, the script sizes the purchase to the backlog and
-- records that many purchase intents in the same step, so the decision to buy reads exactly the keys a purchase
-- commit writes (invariant 1). The backlog is the jobs that want a slot now (common.lua, backlog_now). Numbers
-- needed = ceil((backlog - free capacity) / daily quota), capped by max_numbers and by the room the caller reports
-- (a Messaging Service's sender limit).
--
-- KEYS[1] cfg HASH          KEYS[2] pool ZSET        KEYS[3] optouts SET
-- KEYS[4] batch HASH        KEYS[5] batch state HASH KEYS[6] batch failures HASH
-- KEYS[7] inflight ZSET     KEYS[8] intents HASH     KEYS[9] purchase lock STRING
-- KEYS[10] unsent ZSET (reserved slots whose outcome is not known yet)
-- KEYS[11] queue LIST       KEYS[12] scheduled ZSET
-- ARGV[1] recipient         ARGV[2] in-flight member (`<job>#<token>`)   ARGV[3] window ms
-- ARGV[4] daily quota       ARGV[5] conversational cap
-- ARGV[6] window key prefix ARGV[7] received key prefix ARGV[8] sticky key prefix
-- ARGV[9] batch retention s ARGV[10] mode: 'fast' | 'locked'
-- ARGV[11] lock token       ARGV[12] intent id prefix  ARGV[13] FriendlyName prefix (`msgr:<customer>:`) (locked)
-- ARGV[14] the ambiguous marker the caller proved was never delivered, or ''
-- ARGV[15] ms after which an unsettled reservation is presumed orphaned (its worker died mid-send)
-- ARGV[16] (locked mode) most numbers the customer may still add besides max_numbers, or -1 for no such limit
-- ARGV[17] quiet periods of the recipient's zones as instants, `start,end,zone` entries joined by `;` ('' = none:
--          quiet hours off, or an urgent batch); computed by the worker from the tz database, compared here with
--          Redis's clock (quiet.rs)
-- ARGV[18] ms after a quiet period's end at which this job comes due (spreads a morning's jobs, no herd at 08:00)
--
-- Before a number is chosen, two rules of the tenant's clock, both on Redis time: a job of a batch whose `expires`
-- (ms) has passed ends `expired` (e|) without a send; a job inside a quiet period is parked until the period ends
-- (state Q|<attempt>|<due>|<zone>, counted in the batch's `quiet` and `quiet:<zone>`, the latest due kept in
-- `quiet_until:<zone>`), due no later than the batch's expiry. An ambiguous earlier attempt is resolved first: it
-- may have been sent.
-- Returns one of:
--   {'ok', number, resid, now, attempt}        slot reserved; state is now r|number|resid|now|attempt
--   {'done', sid} | {'terminal', kind}         nothing to do (job removed from in-flight)
--   {'lost'}                                   the caller's lease is gone: another worker may have the job
--   {'opted_out'} | {'cancelled'} | {'orphan'} job finished here (orphan: its batch no longer exists)
--   {'expired'}                                job finished here: the batch's expiry passed
--   {'quiet', due, zone}                       job parked until quiet hours end in `zone`
--   {'ambiguous', number, resid, ms, attempt, now}   an earlier attempt may have been sent
--   {'full', numbers, pending_intents, max_numbers, earliest_free_ms, oldest_intent_ms, now, job state, orphans}
--                                              orphans: old unsettled reservations; while there are any, nobody
--                                              buys (they may free capacity once resolved)
--   {'intents', now, backlog, free, id...}    (locked mode) the caller must buy one number per intent id now
--                                              (intent `<prefix><i>`, FriendlyName `<name prefix><id>`)
--   {'lost_lock'}                              (locked mode) the lock is no longer ours

local cfg, pool, optouts, batch, state, failures, inflight, intents, lock, unsent =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local recipient, member = ARGV[1], ARGV[2]
local window_ms, quota, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local wprefix, rprefix, sprefix = ARGV[6], ARGV[7], ARGV[8]
local retention = tonumber(ARGV[9])
local mode, token, intent_prefix, name_prefix, expect = ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]
local orphan_ms, room = tonumber(ARGV[15]), tonumber(ARGV[16] or '-1')
local quiet, spread = ARGV[17] or '', tonumber(ARGV[18] or '0')

local now = now_ms()

if not redis.call('ZSCORE', inflight, member) then
  return {'lost'}
end
local b = redis.call('HMGET', batch, 'total', 'cancel', 'state', 'expires')
if not b[1] then
  redis.call('ZREM', inflight, member)
  return {'orphan'}
end
if b[3] == 'complete' then
  -- Every job of the batch already ended (its states are gone): a leftover copy must not send.
  redis.call('ZREM', inflight, member)
  return {'terminal', 'c'}
end

local st = redis.call('HGET', state, recipient)
local attempt = '0'
if st then
  local kind = string.sub(st, 1, 1)
  if kind == 'd' then
    redis.call('ZREM', inflight, member)
    return {'done', string.sub(st, 3)}
  elseif is_terminal(st) then
    redis.call('ZREM', inflight, member)
    return {'terminal', kind}
  end
  local p = split(st)
  if kind == 'r' then
    if st ~= expect then
      return {'ambiguous', p[2], p[3], p[4], p[5], now}
    end
    -- The caller listed Twilio and the earlier attempt never arrived: give its slot back before reserving anew.
    release_slot(wprefix, unsent, st)
    attempt = p[5]
    st = 'w|' .. attempt .. '|unsent'
    redis.call('HSET', state, recipient, st)
  else
    attempt = p[2]
  end
end

if b[2] == '1' then
  return {'cancelled', finish(nil, batch, state, failures, inflight, recipient, member, st, 'x', '', retention, now)}
end
if redis.call('SISMEMBER', optouts, recipient) == 1 then
  return {'opted_out', finish(counted_in(cfg, b[2]), batch, state, failures, inflight, recipient, member, st, 'o', '', retention, now)}
end
local expires = tonumber(b[4])
if expires and now >= expires then
  finish(counted_in(cfg, b[2]), batch, state, failures, inflight, recipient, member, st, 'e', '', retention, now)
  return {'expired'}
end
for qs, qe, zone in string.gmatch(quiet, '(%d+),(%d+),([^;]+)') do
  qs, qe = tonumber(qs), tonumber(qe)
  if qs <= now and now < qe then
    local due = qe + spread
    if expires and due > expires then due = expires end
    leave_deferred(batch, st)
    redis.call('HSET', state, recipient, 'Q|' .. attempt .. '|' .. due .. '|' .. zone)
    redis.call('HINCRBY', batch, 'quiet', 1)
    redis.call('HINCRBY', batch, 'quiet:' .. zone, 1)
    if (tonumber(redis.call('HGET', batch, 'quiet_until:' .. zone)) or 0) < due then
      redis.call('HSET', batch, 'quiet_until:' .. zone, due)
    end
    redis.call('ZREM', inflight, member)
    redis.call('ZADD', KEYS[12], due, job_of(member))
    return {'quiet', due, zone}
  end
end

-- Capacity of one number right now; drops entries that have aged out of the window on the way.
local horizon = now - window_ms
local function available(number)
  local sent = window_count(wprefix .. number, horizon)
  -- Replies in the window (aged ones are trimmed when replies are recorded, and the key expires on its own).
  local limit = math.min(quota + redis.call('ZCOUNT', rprefix .. number, '(' .. horizon, '+inf'), cap)
  return limit - sent
end

-- Sticky senders live in one hash per window-long epoch (the current and the previous one are read), split into
-- 1,000 buckets by the recipient's last three digits so each stays small enough for Redis's compact listpack
-- encoding (about 25 bytes a recipient instead of about 70); the field is the number without those digits.
local epoch = math.floor(now / window_ms)
local bucket, field = string.sub(recipient, -3), string.sub(recipient, 1, -4)
local sticky_cur = sprefix .. epoch .. ':' .. bucket
local sticky_prev = sprefix .. (epoch - 1) .. ':' .. bucket

local chosen = nil
local numbers = nil -- the pool, once read
local sticky = redis.call('HGET', sticky_cur, field) or redis.call('HGET', sticky_prev, field)
if sticky and redis.call('ZSCORE', pool, sticky) and available(sticky) > 0 then
  chosen = sticky
end

if not chosen then
  -- Numbers fill one after another, so the current number almost always has room: try it alone first, and scan
  -- the pool only when it is full.
  local current = redis.call('HGET', cfg, 'current')
  if current and current ~= sticky and available(current) > 0 then
    chosen = current
  else
    numbers = redis.call('ZRANGE', pool, 0, -1)
    for i = 1, #numbers do
      local n = numbers[i]
      if n ~= current and n ~= sticky and available(n) > 0 then
        chosen = n
        redis.call('HSET', cfg, 'current', n)
        break
      end
    end
  end
end

if chosen then
  local resid = redis.call('HINCRBY', cfg, 'resseq', 1)
  window_push(wprefix .. chosen, now, resid, window_ms)
  redis.call('ZADD', unsent, now, chosen .. '|' .. resid)
  redis.call('HSET', sticky_cur, field, chosen)
  redis.call('PEXPIRE', sticky_cur, 2 * window_ms + 1000)
  leave_deferred(batch, st)
  redis.call('HSET', state, recipient, 'r|' .. chosen .. '|' .. resid .. '|' .. now .. '|' .. attempt)
  return {'ok', chosen, tostring(resid), tostring(now), attempt}
end

-- No capacity anywhere.
numbers = numbers or redis.call('ZRANGE', pool, 0, -1)
local max_numbers = tonumber(redis.call('HGET', cfg, 'max_numbers')) or 0
local earliest = -1
for i = 1, #numbers do
  local oldest = window_oldest(wprefix .. numbers[i])
  if oldest then
    local free_at = oldest + window_ms
    if earliest < 0 or free_at < earliest then earliest = free_at end
  end
end
-- Unsettled reservations older than any live send can take belong to workers that died mid-send. Entries older
-- than a window no longer hold any quota and are dropped.
redis.call('ZREMRANGEBYSCORE', unsent, '-inf', now - window_ms)
local orphans = redis.call('ZCOUNT', unsent, '-inf', now - orphan_ms)
local pending = redis.call('HVALS', intents)
local oldest_intent = -1
for i = 1, #pending do
  local created = tonumber(split(pending[i])[1]) or 0
  if oldest_intent < 0 or created < oldest_intent then oldest_intent = created end
end

if mode == 'locked' then
  if redis.call('GET', lock) ~= token then
    return {'lost_lock'}
  end
  local allowed = max_numbers - #numbers
  if room >= 0 and room < allowed then allowed = room end
  if #pending == 0 and orphans == 0 and allowed > 0 then
    -- This job wants a slot whatever the counts say (it is in flight without one).
    local backlog = math.max(backlog_now(cfg, KEYS[11], KEYS[12], inflight, unsent, now), 1)
    local free = 0
    for i = 1, #numbers do
      free = free + math.max(available(numbers[i]), 0)
    end
    local need = math.ceil((backlog - free) / quota)
    if need > allowed then need = allowed end
    if need >= 1 then
      local out = {'intents', now, backlog, free}
      for i = 1, need do
        local id = intent_prefix .. string.format('%03x', i)
        redis.call('HSET', intents, id, now .. '|' .. name_prefix .. id)
        out[#out + 1] = id
      end
      return out
    end
  end
end
return {'full', #numbers, #pending, max_numbers, earliest, oldest_intent, now, st or '', orphans}
