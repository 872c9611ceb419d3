-- cap_spent.lua: marks a carrier cap spent until a time, as Twilio reported it after accepting a text (30022: the
-- campaign's throughput; 30023 or 30027: the brand's T-Mobile day, used on another platform too). The reserve
-- script holds that carrier's jobs until then instead of sending them to be refused. It only ever moves the time
-- later: a late, repeated report never shortens a hold.
--
-- KEYS[1] customer cfg HASH
-- ARGV[1] field: 'spent_tmo' | 'spent_att' | 'spent_all'
-- ARGV[2] until (Redis ms), or '' to hold for ARGV[3] ms from now
-- Returns the time the cap is now held until (Redis ms).

local cfg, field = KEYS[1], ARGV[1]
local until_ms = tonumber(ARGV[2])
if not until_ms then until_ms = now_ms() + tonumber(ARGV[3]) end
local held = tonumber(redis.call('HGET', cfg, field)) or 0
if until_ms > held then
  redis.call('HSET', cfg, field, until_ms)
  return until_ms
end
return held
