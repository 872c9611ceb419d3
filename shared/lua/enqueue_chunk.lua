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
-- A personalised batch's members carry each recipient's merge values (`<batch>|<recipient>|<values>`); they are also
-- kept in the batch's values hash (KEYS[5]) for as long as ARGV[3] says, so a resend to the failed and the support
-- desk's inbox still know a tenant's name and unit after the job has left Redis.
--
-- KEYS[1] batch HASH   KEYS[2] queue LIST   KEYS[3] customer cfg HASH   KEYS[4] scheduled ZSET
-- KEYS[5] the batch's values HASH
-- ARGV[1] offset of this chunk   ARGV[2] 'front' | 'back' | 'at:<due ms>'   ARGV[3] how long the values are kept, s
-- ARGV[4..] job members
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
local jobs, values = {}, {}
local at = tonumber(string.match(ARGV[2], '^at:(%d+)$') or '')
local FIRST = 4
for i = FIRST, #ARGV do
  if at then jobs[#jobs + 1] = at end
  jobs[#jobs + 1] = ARGV[i]
  local r, v = string.match(ARGV[i], '^[^|]*|([^|]*)|(.*)$')
  if r then values[#values + 1] = r values[#values + 1] = v end
end
local count = #ARGV - FIRST + 1
if #values > 0 then
  -- In slices: Lua unpacks at most a few thousand values at once.
  for i = 1, #values, 2000 do
    redis.call('HSET', KEYS[5], unpack(values, i, math.min(i + 1999, #values)))
  end
  redis.call('EXPIRE', KEYS[5], tonumber(ARGV[3]))
end
if #jobs > 0 then
  if at then
    redis.call('ZADD', sched, unpack(jobs))
  else
    redis.call(ARGV[2] == 'front' and 'LPUSH' or 'RPUSH', queue, unpack(jobs))
  end
  if f[3] ~= '1' then
    redis.call('HINCRBY', cfg, 'open', count)
  end
end
enqueued = redis.call('HINCRBY', batch, 'enqueued', count)
if enqueued >= total then
  redis.call('HSET', batch, 'state', 'queued', 'enqueued_ms', now_ms())
end
return enqueued
