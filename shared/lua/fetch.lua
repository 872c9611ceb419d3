-- fetch.lua: hands up to N ready jobs of one customer to a worker, under a lease.
--
-- First returns expired leases to the front of the queue (their worker died or stalled: this is how a killed
-- process's jobs come back, per job, within one lease), then promotes scheduled jobs that are due (retries,
-- deferrals) to the front as well, so they do not wait behind a 100,000-job backlog. Both steps are bounded so a
-- huge backlog never builds one oversized reply (apalis-redis's "too many results to unpack" crash).
--
-- Jobs are handed out as in-flight members `<job>#<token>` (common.lua), the token fresh for this call.
--
-- When the customer has no job anywhere (queue, schedule and in-flight all empty), its `open` counter must be zero
-- (common.lua); it is reset here, which heals any drift.
--
-- KEYS[1] queue LIST   KEYS[2] scheduled ZSET   KEYS[3] inflight ZSET   KEYS[4] customer cfg HASH
-- ARGV[1] max jobs     ARGV[2] lease ms         ARGV[3] max promotions per call   ARGV[4] lease token
-- Returns {queue_len_after, next_due_in_ms or -1, inflight_count, job...}
--   next_due_in_ms: time until the earliest scheduled job or lease deadline, so an idle fetcher knows when to
--   come back (relative, so the fetcher never compares Redis time with its own clock).

local queue, sched, inflight, cfg = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local n, lease, limit, token = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now = now_ms()

local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', 0, limit)
for i = 1, #expired do
  redis.call('ZREM', inflight, expired[i])
  redis.call('LPUSH', queue, job_of(expired[i]))
end

local due = redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'LIMIT', 0, limit)
for i = #due, 1, -1 do
  redis.call('ZREM', sched, due[i])
  redis.call('LPUSH', queue, due[i])
end

local jobs = {}
if n > 0 then
  jobs = redis.call('LPOP', queue, n) or {}
  if #jobs > 0 then
    local args = {}
    local deadline = now + lease
    for i = 1, #jobs do
      args[#args + 1] = deadline
      args[#args + 1] = jobs[i] .. '#' .. token
    end
    redis.call('ZADD', inflight, unpack(args))
  end
end

local next_due = -1
local s = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')
if s[2] then next_due = tonumber(s[2]) end
local f = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
if f[2] and (next_due < 0 or tonumber(f[2]) < next_due) then next_due = tonumber(f[2]) end

if next_due >= 0 then next_due = math.max(next_due - now, 0) end
local out = {redis.call('LLEN', queue), next_due, redis.call('ZCARD', inflight)}
if out[1] == 0 and not s[2] and out[3] == 0 then
  redis.call('HDEL', cfg, 'open')
end
for i = 1, #jobs do out[#out + 1] = jobs[i] end
return out
