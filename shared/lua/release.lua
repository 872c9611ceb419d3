-- release.lua: hands jobs a worker fetched but never started back to the front of the queue (graceful
-- shutdown), so they do not wait for their lease to expire. A job whose lease already expired (and may already
-- be running elsewhere) is left alone.
--
-- KEYS[1] queue LIST   KEYS[2] inflight ZSET
-- ARGV[1..] in-flight members (`<job>#<token>`)
-- Returns the number of jobs handed back.

local queue, inflight = KEYS[1], KEYS[2]
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('ZREM', inflight, ARGV[i]) == 1 then
    redis.call('LPUSH', queue, job_of(ARGV[i]))
    n = n + 1
  end
end
return n
