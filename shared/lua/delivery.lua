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
-- KEYS[5] the customer's cfg HASH (the deliverability pause's settings: `pause_min`, `pause_pct`, `pause_codes`)
--
-- The deliverability pause (docs/DESIGN.md, "Deliverability pause"): once the batch has at least `pause_min` final
-- reports (50 when unset) since it started or was last resumed, and the share of them with a carrier-filtering code
-- (`pause_codes`, comma-joined; 30007 and 30034 when unset) reaches `pause_pct` percent (10 when unset), the batch
-- pauses in the same step (`paused`, `pause_why`, `paused_ms`, `paused_by` = auto) and reports `batch.paused`:
-- reserve.lua parks its texts until a person resumes it (batch_pause.lua). A batch paused, cancelled or complete is
-- not looked at.
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
  -- The deliverability pause: counted from the batch's counters (and where the last resume left them).
  local p = redis.call('HMGET', batch, 'delivered', 'undelivered', 'paused', 'cancel', 'state', 'pause_base_n',
    'pause_base_f')
  if p[3] ~= '1' and p[4] ~= '1' and p[5] ~= 'complete' and KEYS[5] then
    local s = redis.call('HMGET', KEYS[5], 'pause_min', 'pause_pct', 'pause_codes')
    local min_n, pct = tonumber(s[1]) or 50, tonumber(s[2]) or 10
    local codes = (s[3] and s[3] ~= '') and s[3] or '30007,30034'
    local n = (tonumber(p[1]) or 0) + (tonumber(p[2]) or 0) - (tonumber(p[6]) or 0)
    if pct > 0 and n >= min_n then
      local filtered, by = 0, {}
      for c in string.gmatch(codes, '%d+') do
        local k = tonumber(redis.call('HGET', batch, 'dlr:' .. c)) or 0
        filtered = filtered + k
        if k > 0 then by[#by + 1] = c .. ': ' .. k end
      end
      filtered = filtered - (tonumber(p[7]) or 0)
      if filtered * 100 >= pct * n then
        local why = filtered .. ' of ' .. n .. ' delivery reports (' .. math.floor(filtered * 100 / n) ..
          '%) were carrier filtering (' .. table.concat(by, ', ') .. '), at or over the ' .. pct .. '% threshold'
        redis.call('HSET', batch, 'paused', '1', 'pause_why', why, 'paused_ms', now_ms(), 'paused_by', 'auto')
        emit('batch.paused', 'b', EV and EV.batch or '', 'by', 'auto', 'reason', why, 'reports', n, 'filtered', filtered)
      end
    end
  end
  if FINAL[status] == 'delivered' then
    emit('message.delivered', 'b', EV and EV.batch or '', 'r', ARGV[5] or '', 'sid', sid, 'status', status)
  else
    emit('message.failed', 'b', EV and EV.batch or '', 'r', ARGV[5] or '', 'sid', sid, 'status', status, 'code', code)
  end
  return {'counted', status}
end
return {'advanced', status}
