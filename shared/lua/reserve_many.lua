-- reserve_many.lua: the fast path for several jobs of one customer in one step (docs/DESIGN.md, "The hot path").
--
-- A job in the plain case — its lease still ours, its batch live (not cancelled, finished or expired), no state or a
-- waiting one (w, D, Q, C, S, P), its batch not paused, the tenant not opted out, outside the quiet periods the worker passed, its line cached
-- and able to take a text (when the customer looks lines up), under every carrier cap it counts in, and a number
-- with room — gets its slot here exactly as reserve.lua would give it (same number order: the tenant's sticky sender,
-- then the number being filled, then the pool in purchase order; same window entry, same state, same unsent entry,
-- same sticky entry). Any other job is answered 'slow' and changes nothing: the caller runs reserve.lua for it,
-- which decides every other case (ambiguity, cancellation, opt-outs, expiry, quiet hours, lookups to make, lines that
-- cannot take a text, a carrier cap reached or spent, no capacity and the purchase decision). A customer whose
-- settings need reserve.lua's rules on every send (a spent campaign, consent required, reviews open, a frequency cap
-- per tenant) gets 'rules' for
-- every job, with nothing read beyond its settings (the caller then reserves that customer's jobs alone for a while).
--
-- Spend is counted as reserve.lua counts it (the text's cost, in the same cfg write). A job whose text would bring
-- spend past the limit, or to the 80 % warning not yet reported this month, is answered 'slow': reserve.lua parks it
-- or reports the warning.
--
-- The carriers' caps (reserve.lua, carriers.rs) are counted the same way and in the same places: the per-second and
-- T-Mobile counters in cfg fields, written back once; AT&T's per-minute log counted once, pushed to once.
--
-- What the jobs share is read and written once: Redis's clock, the customer's settings (one HMGET, one HSET), each
-- batch's record, each state hash (one HMGET, one HSET), the in-flight set (ZMSCORE), opt-outs (SMISMEMBER), each
-- number's capacity (counted once over the window and its slack, common.lua, then kept in the script) and window (one
-- RPUSH, one PEXPIRE), and unsent (one
-- ZADD). Because the whole call is one script, the jobs' reservations are as atomic as one job's: invariant 2 (no
-- quota overrun) holds the same way.
--
-- KEYS[1] cfg HASH   KEYS[2] pool ZSET   KEYS[3] optouts SET   KEYS[4] inflight ZSET   KEYS[5] unsent ZSET
-- KEYS[6..] per job, two keys: batch HASH, batch state HASH
-- ARGV[1] window ms   ARGV[2] daily quota   ARGV[3] conversational cap   ARGV[4] window key prefix
-- ARGV[5] received key prefix   ARGV[6] sticky key prefix   ARGV[7] lookup cache prefix   ARGV[8] carrier caps' prefix
-- ARGV[9] the spend terms (common.lua, spend_terms), or '' (nothing counted)
-- ARGV[10..] per job, five arguments: recipient, in-flight member (`<job>#<token>`), quiet periods of the recipient's
--           zones (as reserve.lua takes them; '' = none), segments of the job's text, the carriers' day as instants
--           (as reserve.lua takes them; '' = no T-Mobile cap)
-- Returns one reply per job, in order: {'ok', number, resid, now, attempt} | {'slow'} | {'rules'}

local cfg, pool, optouts, inflight, unsent = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local window_ms, quota, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local wprefix, rprefix, sprefix, lprefix, cprefix = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local KEYS_EACH, ARGS_EACH, KEYS_FIXED, ARGS_FIXED = 2, 5, 5, 9
local terms = spend_terms(ARGV[9])
local LOOKUP_EPOCH_MS = 30 * 86400000
local n = (#ARGV - ARGS_FIXED) / ARGS_EACH
local now = now_ms()
local out = {}

local c = redis.call('HMGET', cfg, 'lookup', 'cap_tmo', 'cap_att', 'cap_mps', 'spent_all', 'consent', 'review_n',
  'review', 'current', 'resseq', 'spent_tmo', 'spent_att', 'mps_s', 'mps_n', 'tmo_day', 'tmo_used', 'tmo_nday',
  'tmo_next', 'att_x', 'spend_limit', 'spend_m', 'spend_u', 'spend_w', 'freq_n')
local spent = terms and spent_this_month(terms, c[21], c[22]) or 0
local limit = terms and tonumber(c[20]) or nil
local spend_counted = false
-- Where this call must leave a job to reserve.lua: past the limit, or at the 80 % warning not yet reported this month
-- (computed once: the jobs compare their spend with one number).
local spend_stop = nil
if limit then
  spend_stop = limit
  if limit > 0 and c[23] ~= terms.month then spend_stop = math.min(limit, math.ceil(limit * 4 / 5) - 1) end
end
-- (A setting that is off is absent or '': customers.rs writes every field it knows.)
local spent_all = tonumber(c[5])
if (spent_all and spent_all > now) or c[6] == '1' or ((tonumber(c[7]) or 0) > 0 and c[8] ~= 'send')
  or tonumber(c[24]) then
  for i = 1, n do out[i] = {'rules'} end
  return out
end

local recipients, members = {}, {}
for i = 1, n do
  local a = ARGS_FIXED + (i - 1) * ARGS_EACH
  recipients[i], members[i] = ARGV[a + 1], ARGV[a + 2]
end
local leased = redis.call('ZMSCORE', inflight, unpack(members))
local opted = redis.call('SMISMEMBER', optouts, unpack(recipients))

-- Each batch's record and the states of its jobs, read once.
local batches, states = {}, {}
for i = 1, n do
  local k = KEYS_FIXED + (i - 1) * KEYS_EACH
  local bk, sk = KEYS[k + 1], KEYS[k + 2]
  if not batches[bk] then
    batches[bk] = redis.call('HMGET', bk, 'total', 'cancel', 'state', 'expires', 'ev', 'id', 'paused')
    states[sk] = { recipients = {}, index = {} }
  end
  local s = states[sk]
  if not s.index[recipients[i]] then
    s.recipients[#s.recipients + 1] = recipients[i]
    s.index[recipients[i]] = #s.recipients
  end
end
for sk, s in pairs(states) do s.values = redis.call('HMGET', sk, unpack(s.recipients)) end

-- The carriers: which caps this customer has, and their counters as of now (reserve.lua reads the same fields).
local cap_tmo, cap_att, cap_mps = tonumber(c[2]), tonumber(c[3]), tonumber(c[4])
local needs_line = c[1] == '1' or cap_tmo or cap_att
local UNREACHABLE = { l = true, i = true, n = true }
local spent_tmo, spent_att = (tonumber(c[11]) or 0) > now, (tonumber(c[12]) or 0) > now
local second = math.floor(now / 1000)
local mps_used = 0
if tonumber(c[13]) == second then mps_used = tonumber(c[14]) or 0 end
local att_key, att_span, att_used = cprefix .. 'att', 60000 + CAP_MINUTE_SLACK_MS, nil
local att_entries = {}
-- T-Mobile's day: its start, end and the next day's end, from the first job's instants (every job of one call has
-- the same, computed by the worker once a minute).
local day_start, day_end, next_end, tmo_used, next_used = nil, nil, nil, 0, 0
local function carriers_day(days)
  if day_start or days == '' then return end
  local d = {}
  for v in string.gmatch(days, '%d+') do d[#d + 1] = tonumber(v) end
  if #d ~= 3 then return end
  if now >= d[2] then day_start, day_end = d[2], d[3] else day_start, day_end, next_end = d[1], d[2], d[3] end
  if tonumber(c[15]) == day_start then tmo_used = tonumber(c[16]) or 0
  elseif tonumber(c[17]) == day_start then tmo_used = tonumber(c[18]) or 0 end
  if tonumber(c[17]) == day_end then next_used = tonumber(c[18]) or 0 end
end
local counted_tmo, counted_next = false, false

-- Whether the job's carrier caps let it go now, counting it in them if so; nil leaves it to reserve.lua (a line to
-- look up, a line that cannot take a text, a cap reached or spent).
local function under_caps(recipient, segments, days)
  local line = nil
  if needs_line then
    local lepoch = math.floor(now / LOOKUP_EPOCH_MS)
    local lbucket, lfield = string.sub(recipient, -3), string.sub(recipient, 1, -4)
    line = redis.call('HGET', lprefix .. lepoch .. ':' .. lbucket, lfield)
      or redis.call('HGET', lprefix .. (lepoch - 1) .. ':' .. lbucket, lfield)
    if not line or UNREACHABLE[line] then return nil end
  end
  local cost = terms and text_cost(terms, segments, line) or 0
  if spend_stop and spent + cost > spend_stop then return nil end
  local is_tmo, is_att = line == 't' or line == 'u', line == 'a' or line == 'u'
  if cap_mps and mps_used >= cap_mps then return nil end
  if is_att then
    if spent_att then return nil end
    if cap_att then
      att_used = att_used or window_count(att_key, now - att_span)
      if att_used >= cap_att then return nil end
    end
  end
  if is_tmo then
    if spent_tmo then return nil end
    if cap_tmo then
      carriers_day(days)
      if day_start and tmo_used + segments > cap_tmo then return nil end
    end
  end
  -- It may go: the returned function counts it once it has a slot.
  return function(resid)
    if terms then spent, spend_counted = spent + cost, true end
    if cap_mps then mps_used = mps_used + 1 end
    if is_att and cap_att then
      att_used = att_used + 1
      att_entries[#att_entries + 1] = window_entry(now, resid)
    end
    if is_tmo and cap_tmo and day_start then
      tmo_used, counted_tmo = tmo_used + segments, true
      if next_end and now >= day_end - 10000 then next_used, counted_next = next_used + segments, true end
    end
  end
end

local function in_quiet(quiet)
  for qs, qe in string.gmatch(quiet, '(%d+),(%d+),[^;]+') do
    if tonumber(qs) <= now and now < tonumber(qe) then return true end
  end
  return false
end

-- Capacity of each number looked at, counted once (dropping aged-out entries on the way) and then kept here.
local span = window_ms + window_slack(window_ms)
local horizon = now - span
local room, in_pool = {}, {}
local function available(number)
  if room[number] == nil then
    local sent = window_count(wprefix .. number, horizon)
    local limit = math.min(quota + redis.call('ZCOUNT', rprefix .. number, '(' .. horizon, '+inf'), cap)
    room[number] = limit - sent
  end
  return room[number]
end
local function pooled(number)
  if in_pool[number] == nil then in_pool[number] = redis.call('ZSCORE', pool, number) ~= false end
  return in_pool[number]
end

local epoch = math.floor(now / window_ms)
local current, numbers = c[9], nil
local resid = tonumber(c[10]) or 0
local new_current = nil
local pushes, unsent_args, sticky_keys = {}, {}, {}
local taken = {}
for i = 1, n do
  local k = KEYS_FIXED + (i - 1) * KEYS_EACH
  local bk, sk = KEYS[k + 1], KEYS[k + 2]
  local a = ARGS_FIXED + (i - 1) * ARGS_EACH
  local recipient, member, quiet = recipients[i], members[i], ARGV[a + 3]
  local segments, days = tonumber(ARGV[a + 4]) or 1, ARGV[a + 5]
  local b, s = batches[bk], states[sk]
  local st = s.values[s.index[recipient]]
  local kind = st and string.sub(st, 1, 1)
  local expires = tonumber(b[4])
  local chosen, count_caps = nil, nil
  if leased[i] and b[1] and b[2] ~= '1' and b[3] ~= 'complete' and b[7] ~= '1' and not (expires and now >= expires)
    and opted[i] == 0 and (not st or kind == 'w' or kind == 'D' or kind == 'Q' or kind == 'C' or kind == 'S' or kind == 'P' or kind == 'F')
    and not taken[sk .. '\0' .. recipient] and not in_quiet(quiet) then
    -- The caps decide before the number: a job they leave to reserve.lua costs no sticky read.
    count_caps = under_caps(recipient, segments, days)
  end
  if count_caps then
    local bucket, field = string.sub(recipient, -3), string.sub(recipient, 1, -4)
    local sticky_cur = sprefix .. epoch .. ':' .. bucket
    local sticky = redis.call('HGET', sticky_cur, field)
      or redis.call('HGET', sprefix .. (epoch - 1) .. ':' .. bucket, field)
    if sticky then sticky = string.match(sticky, '^[^|]*') end
    if sticky and pooled(sticky) and available(sticky) > 0 then
      chosen = sticky
    elseif current and current ~= sticky and available(current) > 0 then
      chosen = current
    else
      numbers = numbers or redis.call('ZRANGE', pool, 0, -1)
      for j = 1, #numbers do
        local m = numbers[j]
        if m ~= current and m ~= sticky and available(m) > 0 then
          chosen, current, new_current = m, m, m
          break
        end
      end
    end
    if chosen then
      taken[sk .. '\0' .. recipient] = true
      resid = resid + 1
      count_caps(resid)
      room[chosen] = room[chosen] - 1
      local wk = wprefix .. chosen
      pushes[wk] = pushes[wk] or {}
      table.insert(pushes[wk], window_entry(now, resid))
      unsent_args[#unsent_args + 1] = now
      unsent_args[#unsent_args + 1] = chosen .. '|' .. resid
      if b[5] == '1' then redis.call('HSET', sticky_cur, field, chosen .. '|' .. (b[6] or ''))
      else redis.call('HSET', sticky_cur, field, chosen) end
      sticky_keys[sticky_cur] = true
      leave_deferred(bk, st)
      local attempt = '0'
      if st then attempt = split(st)[2] end
      s.sets = s.sets or {}
      s.sets[#s.sets + 1] = recipient
      s.sets[#s.sets + 1] = 'r|' .. chosen .. '|' .. resid .. '|' .. now .. '|' .. attempt
      out[i] = {'ok', chosen, tostring(resid), tostring(now), attempt}
    end
  end
  if not chosen then out[i] = {'slow'} end
end

-- The writes the reservations share, each once.
if #unsent_args == 0 then return out end
for wk, entries in pairs(pushes) do
  redis.call('RPUSH', wk, unpack(entries))
  redis.call('PEXPIRE', wk, span + 1000)
end
-- The settings a reservation changes, as reserve.lua's put() writes them, once.
local f = {'resseq', resid}
if new_current then f[#f + 1] = 'current'; f[#f + 1] = new_current end
if cap_mps then f[#f + 1] = 'mps_s'; f[#f + 1] = second; f[#f + 1] = 'mps_n'; f[#f + 1] = mps_used end
if #att_entries > 0 then
  redis.call('RPUSH', att_key, unpack(att_entries))
  if tonumber(c[19]) ~= second then
    redis.call('PEXPIRE', att_key, att_span + 1000)
    f[#f + 1] = 'att_x'; f[#f + 1] = second
  end
end
if spend_counted then f[#f + 1] = 'spend_m'; f[#f + 1] = terms.month; f[#f + 1] = 'spend_u'; f[#f + 1] = spent end
if counted_tmo then f[#f + 1] = 'tmo_day'; f[#f + 1] = day_start; f[#f + 1] = 'tmo_used'; f[#f + 1] = tmo_used end
if counted_next then f[#f + 1] = 'tmo_nday'; f[#f + 1] = day_end; f[#f + 1] = 'tmo_next'; f[#f + 1] = next_used end
redis.call('HSET', cfg, unpack(f))
redis.call('ZADD', unsent, unpack(unsent_args))
for key in pairs(sticky_keys) do redis.call('PEXPIRE', key, 2 * window_ms + 1000) end
for sk, s in pairs(states) do
  if s.sets then redis.call('HSET', sk, unpack(s.sets)) end
end
return out
