-- record_inbound.lua: credits a message received on one of the customer's numbers: +1 to that number's limit for
-- one window, up to the conversational cap (the cap is applied when capacity is computed).
-- Idempotent per message sid: Twilio retries webhooks.
--
-- KEYS[1] received window ZSET of the number   KEYS[2] pool ZSET
-- ARGV[1] message sid   ARGV[2] window ms   ARGV[3] number
-- Returns {'ok', received_in_window} | {'unknown_number'} | {'duplicate', received_in_window}

local rk, pool = KEYS[1], KEYS[2]
local sid, window_ms, number = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if not redis.call('ZSCORE', pool, number) then
  return {'unknown_number'}
end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - window_ms)
local added = redis.call('ZADD', rk, 'NX', now, sid)
redis.call('PEXPIRE', rk, window_ms + 1000)
local n = redis.call('ZCARD', rk)
if added == 0 then
  return {'duplicate', n}
end
return {'ok', n}
