-- spend_release.lua: the customer's monthly spend limit changed; the jobs it parked come due now (docs/DESIGN.md,
-- "Spend limit"). Each goes back through reserve.lua, which sends it under the new limit or parks it again. A job
-- that already left the schedule (sent, cancelled, fetched) is not touched (ZADD XX).
--
-- KEYS[1] spendwait SET (job members)   KEYS[2] sched ZSET
-- Returns how many jobs came due.

local waiting = redis.call('SMEMBERS', KEYS[1])
local now = now_ms()
local n = 0
for i = 1, #waiting do
  n = n + redis.call('ZADD', KEYS[2], 'XX', 'CH', now, waiting[i])
end
redis.call('DEL', KEYS[1])
return n
