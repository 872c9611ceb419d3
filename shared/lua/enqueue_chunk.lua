-- enqueue_chunk.lua: appends one chunk of jobs to the customer's queue, exactly once.
--
-- The batch's `enqueued` counter is the cursor: a chunk is pushed only if it starts where the cursor stands, so a
-- producer that died mid-enqueue (or timed out on a push that actually succeeded) can resubmit the same request
-- and the chunks already pushed are skipped instead of queued twice.
--
-- Single messages go to the front of the queue (ARGV[2] = 'front'): they are usually a person waiting for them.
-- A batch scheduled for later (ARGV[2] = 'at:<ms>') goes to the schedule, due then: fetchers promote it when it is
-- due and never look at it before (a scheduled job costs no fetch).
--
-- The jobs also count in the customer's `open` counter (common.lua), unless the batch was cancelled.
--
-- KEYS[1] batch HASH   KEYS[2] queue LIST   KEYS[3] customer cfg HASH   KEYS[4] scheduled ZSET
-- ARGV[1] offset of this chunk   ARGV[2] 'front' | 'back' | 'at:<due ms>'   ARGV[3..] job members
-- Returns the cursor after this call.

local batch, queue, cfg, sched = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local offset = tonumber(ARGV[1])
local f = redis.call('HMGET', batch, 'enqueued', 'total', 'cancel')
local enqueued, total = tonumber(f[1]), tonumber(f[2])
if enqueued == nil then
  return redis.error_reply('batch record missing')
end
if enqueued ~= offset then
  return enqueued
end
local jobs = {}
local at = tonumber(string.match(ARGV[2], '^at:(%d+)$') or '')
for i = 3, #ARGV do
  if at then jobs[#jobs + 1] = at end
  jobs[#jobs + 1] = ARGV[i]
end
if #jobs > 0 then
  if at then
    redis.call('ZADD', sched, unpack(jobs))
  else
    redis.call(ARGV[2] == 'front' and 'LPUSH' or 'RPUSH', queue, unpack(jobs))
  end
  if f[3] ~= '1' then
    redis.call('HINCRBY', cfg, 'open', #ARGV - 2)
  end
end
enqueued = redis.call('HINCRBY', batch, 'enqueued', #ARGV - 2)
if enqueued >= total then
  redis.call('HSET', batch, 'state', 'queued', 'enqueued_ms', now_ms())
end
return enqueued
