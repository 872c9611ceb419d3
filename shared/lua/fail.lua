-- fail.lua: ends a job without a (new) text: permanently failed, opted out, or cancelled.
--
-- Gives back the quota slot the attempt had reserved (Twilio rejected the message outright, so it never counted
-- against the number), records the opt-out when Twilio reports 21610, and updates the batch counters atomically.
-- Only acts if the job is still in the state the caller saw (compare-and-set on the state value), so a late
-- caller cannot overwrite a newer outcome.
--
-- KEYS[1] batch HASH  KEYS[2] batch state HASH  KEYS[3] batch failures HASH  KEYS[4] inflight ZSET
-- KEYS[5] optouts SET  KEYS[6] unsent ZSET  KEYS[7] customer cfg HASH  KEYS[8] events STREAM
-- KEYS[9] opt-out records HASH (a 21610 is recorded there as an opt-out Twilio reported)
-- KEYS[10] the recipient's conversation STRING of this epoch: a permanent failure ('f') is written there with its
--          reason, so a tenant who says "I never got it" has a thread that shows why
-- ARGV[1] recipient   ARGV[2] in-flight member   ARGV[3] kind 'f' | 'o' | 'x'   ARGV[4] reason
-- ARGV[5] state value the caller saw ('' = any non-terminal)   ARGV[6] window key prefix
-- ARGV[7] batch retention s
-- Returns {'ok', completed 0|1} | {'stale'} | {'orphan'}

local batch, state, failures, inflight, optouts, unsent, cfg = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local recipient, member, kind, reason, expect, wprefix =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local retention = tonumber(ARGV[7])
local now = now_ms()

local b = redis.call('HMGET', batch, 'state', 'cancel', 'ev', 'id')
events_for(KEYS[8], b[3], b[4])
local bstate = b[1]
if not bstate then
  redis.call('ZREM', inflight, member)
  return {'orphan'}
end
if bstate == 'complete' then
  redis.call('ZREM', inflight, member)
  return {'stale'}
end
local st = redis.call('HGET', state, recipient)
if is_terminal(st) or (expect ~= '' and st ~= expect) then
  return {'stale'}
end
release_slot(wprefix, unsent, st)
if kind == 'o' and redis.call('SADD', optouts, recipient) == 1 then
  local from = ''
  if st and string.sub(st, 1, 1) == 'r' then from = split(st)[2] end
  record_opt(KEYS[9], recipient, 'opt_out', 'twilio 21610', from, now, '', { via = 'twilio' })
  if end_review(customer_key(cfg, 'review'), cfg, recipient) == 1 then
    release_held(customer_key(cfg, 'held:') .. recipient, customer_key(cfg, 'sched'), now)
  end
  emit('recipient.opted_out', 'r', recipient, 'keyword', 'twilio 21610', 'number', from, 'via', 'twilio')
end
if kind == 'f' and KEYS[10] then
  local from = ''
  if st and string.sub(st, 1, 1) == 'r' then from = split(st)[2] end
  converse(KEYS[10], 'f', now, from, reason, '', b[4] or '')
end
return {'ok', finish(counted_in(cfg, b[2]), batch, state, failures, inflight, recipient, member, st, kind, reason, retention, now)}
