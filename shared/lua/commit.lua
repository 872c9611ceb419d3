-- commit.lua: records a sent message. Called the moment Twilio returns a message sid (or when an ambiguous
-- attempt is found in Twilio's message list), and idempotent, so the worker may retry it after a Redis error.
--
-- A commit for a job that is already terminal is not an error: it means the text was sent twice (a worker that
-- was paused past its lease, then resumed). That cannot be undone, so it is counted in the batch's `dup_sends`
-- for operators to see, and the window entry stays (the message did go out).
--
-- The message went out some time after its slot was reserved, and the quota must hold by the time Twilio saw it:
-- the slot must stay taken for a full window after Twilio accepted the message, never less. An entry counts for the
-- window plus a slack (common.lua, window_slack), so one whose send took less than the slack already does; one that
-- took longer is re-stamped (removed, and pushed again with the commit time, which is later than Twilio's).
--
-- The number's last send time is kept in the pool's `last` hash, for releasing numbers that have gone idle.
--
-- KEYS[1] batch HASH   KEYS[2] batch state HASH   KEYS[3] batch failures HASH   KEYS[4] inflight ZSET
-- KEYS[5] unsent ZSET  KEYS[6] customer cfg HASH  KEYS[7] pool last-send HASH  KEYS[8] events STREAM
-- ARGV[1] recipient    ARGV[2] in-flight member   ARGV[3] message sid           ARGV[4] batch retention s
-- ARGV[5] window key prefix   ARGV[6] window ms   ARGV[7] the number the message was sent from
-- ARGV[8] prefix of the carrier caps' keys (reserve.lua): this reservation's entry in AT&T's per-minute log is
--         re-stamped like the window's when the send took longer than the log's slack, so that cap holds by the time
--         Twilio took the text (the per-second cap is counted at reservation: a second is shorter than the send)
-- KEYS[9] the recipient's conversation STRING of this epoch (common.lua)   ARGV[9] the text as sent, kept in the
--         conversation (for every customer: the support desk's threads; '' = not kept)
-- Returns {'ok', completed 0|1} | {'already'} (same sid recorded before) | {'duplicate'} | {'orphan'}

local batch, state, failures, inflight, unsent, cfg, last = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local recipient, member, sid, retention, wprefix = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local window_ms, from, cprefix, body = tonumber(ARGV[6]), ARGV[7], ARGV[8] or '', ARGV[9] or ''
local slack = window_slack(window_ms)
local now = now_ms()
if from ~= '' then
  redis.call('HSET', last, from, now)
end

local b = redis.call('HMGET', batch, 'total', 'state', 'cancel', 'ev', 'id')
events_for(KEYS[8], b[4], b[5])
if EV then EV.from = from end
if not b[1] then
  redis.call('ZREM', inflight, member)
  return {'orphan'}
end
local st = redis.call('HGET', state, recipient)
if st == 'd|' .. sid then
  redis.call('ZREM', inflight, member)
  return {'already'}
end
if b[2] == 'complete' or is_terminal(st) then
  redis.call('HINCRBY', batch, 'dup_sends', 1)
  redis.call('ZREM', inflight, member)
  -- The text did go out: it counts against its number's quota like any other.
  if from ~= '' then
    window_push(wprefix .. from, now, 'dup' .. sid, window_ms + slack)
  end
  return {'duplicate'}
end
if st and string.sub(st, 1, 1) == 'r' then
  -- The outcome is settled, and the entry moves to the tail with the commit time. If it already aged out (a send
  -- slower than the window), the message still went out now and counts from now.
  local p = split(st)
  redis.call('ZREM', unsent, p[2] .. '|' .. p[3])
  if now - (tonumber(p[4]) or now) > slack then
    redis.call('LREM', wprefix .. p[2], -1, window_entry(p[4], p[3]))
    window_push(wprefix .. p[2], now, p[3], window_ms + slack)
  end
  -- The reservation's entry in AT&T's per-minute log (when it is there) moves to now as well if the send took
  -- longer than the log's slack (common.lua); a quicker one is already counted for long enough.
  if cprefix ~= '' and now - (tonumber(p[4]) or now) > CAP_MINUTE_SLACK_MS
    and redis.call('LREM', cprefix .. 'att', -1, window_entry(p[4], p[3])) > 0 then
    window_push(cprefix .. 'att', now, p[3], 60000 + CAP_MINUTE_SLACK_MS)
  end
end
if body ~= '' and KEYS[9] then converse(KEYS[9], 'o', now, from, body, sid, b[5] or '') end
return {'ok', finish(counted_in(cfg, b[3]), batch, state, failures, inflight, recipient, member, st, 'd', sid, retention, now)}
