-- signin_attempt.lua: counts a dashboard sign-in attempt from one client address, in one step, before the token is
-- checked, so attempts sent in parallel cannot all read a count under the limit (producer/src/server/dashboard/
-- session.rs). A successful attempt gives its count back ('give_back').
--
-- KEYS[1] `{msgr:dash}:signin:<client>` STRING
-- ARGV[1] 'take' | 'give_back'   ARGV[2] the window, ms (the count starts at the window's first attempt)
-- Returns take: {attempts in this window, including this one; ms until the window ends}
--         give_back: attempts left in the window

if ARGV[1] == 'give_back' then
  local n = tonumber(redis.call('GET', KEYS[1]) or '0')
  if n > 0 then n = redis.call('DECR', KEYS[1]) end
  return n
end
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  -- A new window (or one whose expiry was lost): it ends one window from now.
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  ttl = tonumber(ARGV[2])
end
return {n, ttl}
