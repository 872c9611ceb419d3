-- commit_many.lua: records several sent messages of one customer in one step — the worker's group commit
-- (docs/DESIGN.md, "The hot path"). Each message is recorded exactly as commit.lua records one (same states, same
-- counters, same events, same conversation entry, same window re-stamp when the send outlasted the slack, same
-- idempotency); what several messages
-- share is read and written once: Redis's clock, each batch's record, each state hash (one HMGET, one HSET), the
-- batch's `sent` counter and the customer's `open` counter (one HINCRBY each), the in-flight and unsent sets (one
-- ZREM each), each number's window (one RPUSH and one PEXPIRE, when entries are re-stamped) and its last send time. A message whose job is not
-- in the plain case (its state is not the reservation it was sent under, or its batch is gone or finished) is
-- answered 'single': the caller records it with commit.lua, which handles every case.
--
-- KEYS[1] customer cfg HASH   KEYS[2] inflight ZSET   KEYS[3] unsent ZSET   KEYS[4] pool last-send HASH
-- KEYS[5] events STREAM
-- KEYS[6..] per message, four keys: batch HASH, batch state HASH, batch failures HASH, the recipient's conversation
--           STRING of this epoch
-- ARGV[1] batch retention s   ARGV[2] window key prefix   ARGV[3] window ms   ARGV[4] carrier caps' key prefix
-- ARGV[5..] per message, five arguments: recipient, in-flight member, message sid, the number it was sent from, the
--           text as sent ('' = not kept in the conversation)
-- Returns one reply per message, in order: {'ok', completed 0|1} | {'already'} | {'single'}

local cfg, inflight, unsent, last, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local retention, wprefix, window_ms, cprefix = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local slack = window_slack(window_ms)
local KEYS_EACH, ARGS_EACH, KEYS_FIXED, ARGS_FIXED = 4, 5, 5, 4
local n = (#ARGV - ARGS_FIXED) / ARGS_EACH
local now = now_ms()

-- Each batch's record and the states of its messages, read once.
local batches, states = {}, {}
for i = 1, n do
  local k = KEYS_FIXED + (i - 1) * KEYS_EACH
  local bk, sk = KEYS[k + 1], KEYS[k + 2]
  if not batches[bk] then
    batches[bk] = redis.call('HMGET', bk, 'total', 'state', 'cancel', 'ev', 'id')
    states[sk] = { recipients = {}, index = {} }
  end
  local s = states[sk]
  local r = ARGV[ARGS_FIXED + (i - 1) * ARGS_EACH + 1]
  if not s.index[r] then
    s.recipients[#s.recipients + 1] = r
    s.index[r] = #s.recipients
  end
end
for sk, s in pairs(states) do
  s.values = redis.call('HMGET', sk, unpack(s.recipients))
end

local out = {}
local members, settled, pushes, sent_from = {}, {}, {}, {}
local done_in, fields_in, open_by = {}, {}, {}
for i = 1, n do
  local k = KEYS_FIXED + (i - 1) * KEYS_EACH
  local a = ARGS_FIXED + (i - 1) * ARGS_EACH
  local bk, sk, conv = KEYS[k + 1], KEYS[k + 2], KEYS[k + 4]
  local recipient, member, sid, from, body = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local b, s = batches[bk], states[sk]
  local st = s.values[s.index[recipient]]
  if st == 'd|' .. sid then
    members[#members + 1] = member
    out[i] = {'already'}
  elseif not b[1] or b[2] == 'complete' or not st or string.sub(st, 1, 1) ~= 'r' or fields_in[sk .. '\0' .. recipient] then
    out[i] = {'single'}
  else
    fields_in[sk .. '\0' .. recipient] = true
    EV = nil
    events_for(stream, b[4], b[5])
    local p = split(st)
    settled[#settled + 1] = p[2] .. '|' .. p[3]
    if now - (tonumber(p[4]) or now) > slack then
      local wk = wprefix .. p[2]
      pushes[wk] = pushes[wk] or {}
      table.insert(pushes[wk], window_entry(now, p[3]))
      redis.call('LREM', wk, -1, window_entry(p[4], p[3]))
    end
    if cprefix ~= '' and now - (tonumber(p[4]) or now) > CAP_MINUTE_SLACK_MS
      and redis.call('LREM', cprefix .. 'att', -1, window_entry(p[4], p[3])) > 0 then
      window_push(cprefix .. 'att', now, p[3], 60000 + CAP_MINUTE_SLACK_MS)
    end
    if from ~= '' then sent_from[from] = true end
    if body ~= '' then converse(conv, 'o', now, from, body, sid, b[5] or '') end
    s.sets = s.sets or {}
    s.sets[#s.sets + 1] = recipient
    s.sets[#s.sets + 1] = 'd|' .. sid
    s.values[s.index[recipient]] = 'd|' .. sid
    done_in[bk] = (done_in[bk] or 0) + 1
    if b[3] ~= '1' then open_by[bk] = (open_by[bk] or 0) + 1 end
    if EV then emit('message.sent', 'b', EV.batch, 'r', recipient, 'sid', sid, 'from', from) end
    members[#members + 1] = member
    out[i] = {'ok', 0, bk, sk, KEYS[k + 3]}
  end
end

-- The writes the messages share, each once.
if #members > 0 then redis.call('ZREM', inflight, unpack(members)) end
if #settled > 0 then redis.call('ZREM', unsent, unpack(settled)) end
for wk, entries in pairs(pushes) do
  redis.call('RPUSH', wk, unpack(entries))
  redis.call('PEXPIRE', wk, window_ms + slack + 1000)
end
local numbers = {}
for from in pairs(sent_from) do
  numbers[#numbers + 1] = from
  numbers[#numbers + 1] = now
end
if #numbers > 0 then redis.call('HSET', last, unpack(numbers)) end
for sk, s in pairs(states) do
  if s.sets then redis.call('HSET', sk, unpack(s.sets)) end
end
local open = 0
for bk, count in pairs(done_in) do
  redis.call('HINCRBY', bk, 'sent', count)
  open = open + (open_by[bk] or 0)
end
if open > 0 then redis.call('HINCRBY', cfg, 'open', -open) end
-- A batch this step finished completes once (the reply of one of its messages says so).
local completed = {}
for i = 1, n do
  local o = out[i]
  if o[1] == 'ok' then
    local bk = o[3]
    if completed[bk] == nil then
      local b = batches[bk]
      EV = nil
      events_for(stream, b[4], b[5])
      completed[bk] = maybe_complete(bk, o[4], o[5], retention, now)
      if completed[bk] == 1 then out[i] = {'ok', 1} else out[i] = {'ok', 0} end
    else
      out[i] = {'ok', 0}
    end
  end
end
return out
