-- batch_pause.lua: a person pauses or resumes a batch (docs/DESIGN.md, "Deliverability pause").
--
-- Pause: the batch's texts not yet reserved wait (reserve.lua parks them: state P) until it is resumed; texts already
-- on their way finish. Resume: the texts it parked (listed in `<batch>:pw`) come due at once, and the automatic pause
-- counts delivery reports afresh from here (`pause_base_n` / `pause_base_f`: the reports and the filtered ones so
-- far), so the reports that paused it do not pause it again.
--
-- KEYS[1] batch HASH   KEYS[2] the batch's paused jobs SET (`<batch>:pw`)   KEYS[3] sched ZSET
-- KEYS[4] events STREAM   KEYS[5] customer cfg HASH (`pause_codes`)
-- ARGV[1] 'pause' | 'resume'   ARGV[2] who (for the record: `hand`, or the dashboard user's name)
-- Returns {'paused'} | {'resumed', jobs the pause listed} | {'already', 'paused' | 'running'} | {'missing'} | {'complete'}

local batch, waiting, sched = KEYS[1], KEYS[2], KEYS[3]
local action, who = ARGV[1], ARGV[2]
local b = redis.call('HMGET', batch, 'total', 'state', 'cancel', 'paused', 'ev', 'id', 'delivered', 'undelivered')
if not b[1] then return {'missing'} end
events_for(KEYS[4], b[5], b[6])
if b[2] == 'complete' or b[3] == '1' then return {'complete'} end
local now = now_ms()
if action == 'pause' then
  if b[4] == '1' then return {'already', 'paused'} end
  local why = 'paused by ' .. who
  redis.call('HSET', batch, 'paused', '1', 'pause_why', why, 'paused_ms', now, 'paused_by', who)
  emit('batch.paused', 'b', EV and EV.batch or '', 'by', who, 'reason', why)
  return {'paused'}
end
if b[4] ~= '1' then return {'already', 'running'} end
local c = redis.call('HGET', KEYS[5], 'pause_codes')
local codes = (c and c ~= '') and c or '30007,30034'
local filtered = 0
for code in string.gmatch(codes, '%d+') do filtered = filtered + (tonumber(redis.call('HGET', batch, 'dlr:' .. code)) or 0) end
redis.call('HDEL', batch, 'paused', 'pause_why', 'paused_ms', 'paused_by')
redis.call('HSET', batch, 'pause_base_n', (tonumber(b[7]) or 0) + (tonumber(b[8]) or 0), 'pause_base_f', filtered,
  'resumed_ms', now, 'resumed_by', who)
local n = release_held(waiting, sched, now)
emit('batch.resumed', 'b', EV and EV.batch or '', 'by', who)
return {'resumed', n}
