-- retry.lua: puts a job back for a later attempt after a transient failure, a wait, or an ambiguous outcome.
--
-- mode 'release': Twilio definitely did not take the message (429, 5xx, connect error): give the reserved slot
--                 back and record the failure count, state w|<attempt>|<reason>.
-- mode 'keep':    the outcome is unknown (timeout after the request went out): keep the slot and the r|... marker,
--                 so the next delivery resolves it against Twilio before any resend.
-- mode 'defer':   no capacity and no room to buy: state D|<attempt>, counted in the batch's `deferred`; the reason
--                 (why no number can be added) is kept as the batch's `deferred_reason` for its status.
-- mode 'wait':    nothing to record (e.g. waiting for another worker's purchase).
-- Compare-and-set on the state value the caller saw, and only while the caller still holds the job (its in-flight
-- member is there): the job moves from in-flight to the schedule at `due`. A batch cancelled meanwhile ends the job
-- as cancelled instead of parking it.
--
-- KEYS[1] batch HASH  KEYS[2] batch state HASH  KEYS[3] inflight ZSET  KEYS[4] scheduled ZSET
-- KEYS[5] unsent ZSET KEYS[6] batch failures HASH  KEYS[7] customer cfg HASH  KEYS[8] events STREAM
-- ARGV[1] recipient   ARGV[2] in-flight member   ARGV[3] mode   ARGV[4] delay ms (from Redis now), or -1
-- ARGV[5] absolute due ms (used when delay is -1)   ARGV[6] attempt   ARGV[7] reason
-- ARGV[8] state value the caller saw ('' = none)    ARGV[9] window key prefix   ARGV[10] batch retention s
-- Returns {'ok', due} | {'stale'} | {'cancelled'}

local batch, state, inflight, sched, unsent, failures, cfg = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local recipient, member, mode = ARGV[1], ARGV[2], ARGV[3]
local delay, due_abs, attempt, reason, expect, wprefix =
  tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local retention = tonumber(ARGV[10])
local now = now_ms()

-- Not ours any more (the lease expired and the job went back to the queue, maybe to another worker).
if not redis.call('ZSCORE', inflight, member) then
  return {'stale'}
end
local b = redis.call('HMGET', batch, 'state', 'cancel', 'ev', 'id')
events_for(KEYS[8], b[3], b[4])
if not b[1] or b[1] == 'complete' then
  redis.call('ZREM', inflight, member)
  return {'stale'}
end
local st = redis.call('HGET', state, recipient)
if is_terminal(st) or (st or '') ~= expect then
  return {'stale'}
end
if b[2] == '1' and mode ~= 'keep' then
  release_slot(wprefix, unsent, st)
  finish(nil, batch, state, failures, inflight, recipient, member, st, 'x', '', retention, now)
  return {'cancelled'}
end
if mode == 'release' then
  release_slot(wprefix, unsent, st)
  leave_deferred(batch, st)
  redis.call('HSET', state, recipient, 'w|' .. attempt .. '|' .. reason)
elseif mode == 'defer' then
  if not (st and string.sub(st, 1, 1) == 'D') then
    -- Leaving quiet hours, a cap or a review for the deferral: those stop counting the job.
    leave_deferred(batch, st)
    redis.call('HINCRBY', batch, 'deferred', 1)
  end
  redis.call('HSET', state, recipient, 'D|' .. attempt)
  if reason ~= '' then
    redis.call('HSET', batch, 'deferred_reason', reason)
  end
end
local due = now + delay
if delay < 0 then due = math.max(due_abs, now) end
redis.call('ZREM', inflight, member)
redis.call('ZADD', sched, due, job_of(member))
return {'ok', due}
