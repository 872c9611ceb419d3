-- cancel.lua: cancels a batch. Jobs still in the queue are cancelled when a worker picks them up (reserve.lua
-- sees the flag and ends them without calling Twilio); jobs parked in the schedule (retries, deferrals, quiet
-- hours, a batch scheduled for later) are cancelled here at once, so a batch waiting for hours completes now. Jobs in flight finish their current attempt.
--
-- The batch's jobs stop counting in the customer's `open` counter at once (common.lua): whatever it still had
-- pending is taken off when the flag is set, and its jobs that end later no longer decrement it.
--
-- KEYS[1] batch HASH  KEYS[2] batch state HASH  KEYS[3] failures HASH  KEYS[4] inflight ZSET  KEYS[5] scheduled ZSET
-- KEYS[6] customer cfg HASH  KEYS[7] events STREAM
-- ARGV[1] batch local id   ARGV[2] batch retention s
-- Returns {'ok', cancelled_now} | {'missing'} | {'complete'}

local batch, state, failures, inflight, sched, cfg = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local local_id, retention = ARGV[1], tonumber(ARGV[2])
local f = redis.call('HMGET', batch, 'total', 'state', 'enqueued', 'cancel', 'sent', 'failed', 'opted_out', 'cancelled',
  'expired', 'ev', 'id')
events_for(KEYS[7], f[10], f[11])
if not f[1] then return {'missing'} end
if f[2] == 'complete' then return {'complete'} end
if f[4] ~= '1' then
  local pending = tonumber(f[3]) or 0
  for i = 5, 9 do pending = pending - (tonumber(f[i]) or 0) end
  if pending > 0 then redis.call('HINCRBY', cfg, 'open', -pending) end
end
redis.call('HSET', batch, 'cancel', '1')
local now = now_ms()
-- Jobs a producer never enqueued (it died mid-enqueue) end as cancelled too, and the cursor moves to the end so a
-- resubmission enqueues nothing more.
local never = tonumber(f[1]) - (tonumber(f[3]) or 0)
if never > 0 then
  redis.call('HINCRBY', batch, 'cancelled', never)
  redis.call('HSET', batch, 'enqueued', f[1])
end
local prefix = local_id .. '|'
local n = 0
local cursor = '0'
repeat
  local r = redis.call('ZSCAN', sched, cursor, 'MATCH', prefix .. '*', 'COUNT', 1000)
  cursor = r[1]
  for i = 1, #r[2], 2 do
    local member = r[2][i]
    local recipient = recipient_of(member)
    local st = redis.call('HGET', state, recipient)
    -- An ambiguous attempt (r|...) may have been delivered: leave it to be resolved against Twilio first.
    local ambiguous = st and string.sub(st, 1, 1) == 'r'
    if not ambiguous then
      redis.call('ZREM', sched, member)
      if not is_terminal(st) then
        finish(nil, batch, state, failures, inflight, recipient, member, st, 'x', '', retention, now)
        n = n + 1
      end
    end
  end
until cursor == '0'
maybe_complete(batch, state, failures, retention, now)
return {'ok', n}
