-- stats_flush.lua: adds a worker's counts since its last flush to the current minute's statistics (Redis time),
-- and records the worker's totals. Workers call it every couple of seconds, so the dashboard can chart sends per
-- minute and list the fleet without anything on the send path.
--
-- KEYS[1] `{msgr:stats}` (routes the call: the hashes written share its hash tag)
-- ARGV[1] per-minute hash prefix   ARGV[2] workers HASH   ARGV[3] worker name   ARGV[4] the worker's totals line
-- ARGV[5..] field, count pairs to add to this minute (`sent`, `sent:<customer>`, …)
-- Returns the minute written.

local t = redis.call('TIME')
local minute = math.floor(tonumber(t[1]) / 60)
local key = ARGV[1] .. minute
for i = 5, #ARGV, 2 do
  redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', key, 7200)
redis.call('HSET', ARGV[2], ARGV[3], ARGV[4])
return minute
