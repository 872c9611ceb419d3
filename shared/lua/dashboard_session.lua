-- dashboard_session.lua: a dashboard session's standing, on one clock (docs: producer/src/server/dashboard/session.rs).
--
-- Redis's clock on the `{msgr:dash}` slot is the one clock of sessions: sign-ins are stamped with it, "sign everyone
-- out" is stamped with it, and a session's age is judged against it, whatever the clocks of the servers (and, on a
-- cluster, of the other nodes).
--
-- KEYS[1] `{msgr:dash}:since` STRING   KEYS[2] the session's revocation record `{msgr:dash}:revoked:<nonce>`, or
--   absent (a sign-in, or a revoke-all)
-- ARGV[1] 'check' | 'now' | 'revoke_all'   ARGV[2] (revoke_all) ms the "since" instant is kept
-- Returns
--   check: {now_ms, since_ms or '', revoked 1|0}
--   now: now_ms (stamps a sign-in)
--   revoke_all: the instant (ms) before which every session is signed out: now + 1, so a session issued in this
--     very ms is out too

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
if op == 'check' then
  return {now, redis.call('GET', KEYS[1]) or '', redis.call('EXISTS', KEYS[2])}
elseif op == 'revoke_all' then
  redis.call('SET', KEYS[1], now + 1, 'PX', tonumber(ARGV[2]))
  return now + 1
end
return now
