-- events_replay.lua: moves dead-lettered events to the replay queue, in one step (a replay asked twice queues an
-- event once; one not dead-lettered is not queued). The deliverer (producer/src/server/deliver.rs) sends what is
-- queued once more and puts an event that fails again back among the dead letters.
--
-- KEYS[1] dead letters ZSET (id → ms)   KEYS[2] replay queue ZSET (id → ms)
-- ARGV[1] most to move   ARGV[2..] the ids to move (none: the oldest, up to ARGV[1])
-- Returns how many were queued.

local dead, replay = KEYS[1], KEYS[2]
local max = tonumber(ARGV[1])
local ids = {}
if #ARGV > 1 then
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', dead, 0, max - 1)
end
local n = 0
for _, id in ipairs(ids) do
  local ms = redis.call('ZSCORE', dead, id)
  if ms then
    redis.call('ZREM', dead, id)
    redis.call('ZADD', replay, ms, id)
    n = n + 1
  end
end
return n
