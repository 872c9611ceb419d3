-- delivery.lua: counts a delivery report (Twilio status callback) once per message, whatever the order and however
-- often Twilio sends it.
--
-- A message's status only moves forward (queued → sending → sent → delivered | undelivered | failed), but
-- callbacks arrive out of order and are retried. The furthest status seen per message is kept; a report that does
-- not move it forward changes nothing, and a message is counted exactly once, when it first reaches a final status.
--
-- When the batch records events, the first final status is reported as `message.delivered` or `message.failed`
-- (with Twilio's error code), once, like the count.
--
-- KEYS[1] batch HASH   KEYS[2] delivery HASH (message sid → furthest status)   KEYS[3] events STREAM
-- KEYS[4] the batch's undelivered HASH (recipient → `<sid>|<status>|<code>`): who the carriers did not reach, for
--         the support desk's lists and resends; kept as long as the delivery hash
-- ARGV[1] message sid  ARGV[2] status  ARGV[3] error code ('' if none)  ARGV[4] retention s
-- ARGV[5] the recipient (the callback's `To`), for the event
-- Returns {'counted', status} | {'advanced', status} | {'ignored', furthest status} | {'orphan'} | {'unknown_status'}

local batch, dlr = KEYS[1], KEYS[2]
local sid, status, code, retention = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local RANK = { accepted = 1, scheduled = 1, queued = 2, sending = 3, sent = 4,
               delivered = 5, undelivered = 5, failed = 5, read = 6, canceled = 5 }
local FINAL = { delivered = 'delivered', read = 'delivered', undelivered = 'undelivered', failed = 'undelivered' }

if not RANK[status] then
  return {'unknown_status'}
end
local b = redis.call('HMGET', batch, 'total', 'ev', 'id')
if not b[1] then
  return {'orphan'}
end
events_for(KEYS[3], b[2], b[3])
local prev = redis.call('HGET', dlr, sid)
if prev and RANK[prev] and RANK[prev] >= RANK[status] then
  return {'ignored', prev}
end
redis.call('HSET', dlr, sid, status)
redis.call('EXPIRE', dlr, retention)
-- Counted once: when the furthest status first becomes final.
if FINAL[status] and not (prev and FINAL[prev]) then
  redis.call('HINCRBY', batch, FINAL[status], 1)
  if FINAL[status] == 'undelivered' and code ~= '' then
    redis.call('HINCRBY', batch, 'dlr:' .. code, 1)
  end
  if FINAL[status] == 'undelivered' and KEYS[4] and (ARGV[5] or '') ~= '' then
    redis.call('HSET', KEYS[4], ARGV[5], sid .. '|' .. status .. '|' .. code)
    redis.call('EXPIRE', KEYS[4], retention)
  end
  if FINAL[status] == 'delivered' then
    emit('message.delivered', 'b', EV and EV.batch or '', 'r', ARGV[5] or '', 'sid', sid, 'status', status)
  else
    emit('message.failed', 'b', EV and EV.batch or '', 'r', ARGV[5] or '', 'sid', sid, 'status', status, 'code', code)
  end
  return {'counted', status}
end
return {'advanced', status}
