-- fleet_settings.lua: the quota model must be the same in every process of the fleet, or one worker with a larger
-- quota would overrun what the others carefully keep. The first process to start stores its settings; later ones
-- compare. `force` overwrites (an operator changing the quota on purpose).
--
-- KEYS[1] settings HASH
-- ARGV[1] window ms   ARGV[2] daily quota   ARGV[3] conversational cap   ARGV[4] '1' to force
-- Returns the stored {window ms, daily quota, cap}.

local k = KEYS[1]
if ARGV[4] == '1' then
  redis.call('HSET', k, 'window_ms', ARGV[1], 'daily_quota', ARGV[2], 'conversational_cap', ARGV[3])
else
  redis.call('HSETNX', k, 'window_ms', ARGV[1])
  redis.call('HSETNX', k, 'daily_quota', ARGV[2])
  redis.call('HSETNX', k, 'conversational_cap', ARGV[3])
end
return redis.call('HMGET', k, 'window_ms', 'daily_quota', 'conversational_cap')
