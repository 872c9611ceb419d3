-- reserve.lua: the fast path, and the re-check inside the purchase lock (docs/DESIGN.md, section 5, steps 1 and 3).
--
-- Atomically: look at the job's state, honour cancellation and opt-outs, pick a number with capacity (the
-- recipient's sticky sender first, then the number being filled (cfg `current`), then the pool in purchase order),
-- and reserve one slot in that number's window at Redis time. A separate read-then-write would over-admit under
-- concurrency; doing it all here is what keeps invariant 2 (no quota overrun).
--
-- In 'locked' mode the caller holds the customer's purchase lock. If there is still no capacity, no purchase in
-- flight, no orphaned reservation and room under max_numbers, the script sizes the purchase to the backlog and
-- records that many purchase intents in the same step, so the decision to buy reads exactly the keys a purchase
-- commit writes (invariant 1). The backlog is the jobs that want a slot now (common.lua, backlog_now), and for a
-- customer whose lines are looked up, only the share of them that carriers would take now. Numbers needed =
-- floor((backlog - free capacity) / daily quota), at least one, capped by max_numbers and by the room the caller
-- reports (a Messaging Service's sender limit): the last, partial number is bought by a later decision, once the
-- whole ones are full and jobs still wait — the tail waits one purchase, and no number is bought for jobs that
-- fail before it would fill.
--
-- KEYS[1] cfg HASH          KEYS[2] pool ZSET        KEYS[3] optouts SET
-- KEYS[4] batch HASH        KEYS[5] batch state HASH KEYS[6] batch failures HASH
-- KEYS[7] inflight ZSET     KEYS[8] intents HASH     KEYS[9] purchase lock STRING
-- KEYS[10] unsent ZSET (reserved slots whose outcome is not known yet)
-- KEYS[11] queue LIST       KEYS[12] scheduled ZSET     KEYS[13] events STREAM   KEYS[14] the tenant's conversation
-- ARGV[1] recipient         ARGV[2] in-flight member (`<job>#<token>`)   ARGV[3] window ms
-- ARGV[4] daily quota       ARGV[5] conversational cap
-- ARGV[6] window key prefix ARGV[7] received key prefix ARGV[8] sticky key prefix
-- ARGV[9] batch retention s ARGV[10] mode: 'fast' | 'locked'
-- ARGV[11] lock token       ARGV[12] intent id prefix  ARGV[13] FriendlyName prefix (`msgr:<customer>:`) (locked)
-- ARGV[14] the ambiguous marker the caller proved was never delivered, or ''
-- ARGV[15] ms after which an unsettled reservation is presumed orphaned (its worker died mid-send)
-- ARGV[16] (locked mode) most numbers the customer may still add besides max_numbers, or -1 for no such limit
-- ARGV[17] quiet periods of the recipient's zones as instants, `start,end,zone` entries joined by `;` ('' = none:
--          quiet hours off, or an urgent batch); computed by the worker from the tz database, compared here with
--          Redis's clock (quiet.rs)
-- ARGV[18] ms after a quiet period's end at which this job comes due (spreads a morning's jobs, no herd at 08:00)
-- ARGV[19] the recipient's line just looked up by the caller (carriers.rs codes: t a v o u l i n), or ''
-- ARGV[20] prefix of the lookup cache (`{c:ID}:lt:`): `<prefix><30-day epoch>:<last 3 digits>`, field = the rest
-- ARGV[21] prefix of the carrier caps' keys (`{c:ID}:cap:`): `att` (AT&T's log, a LIST like send windows); the
--         per-second and T-Mobile counters are fields of cfg (`mps_s`/`mps_n`, `tmo_day`/`tmo_used`/`tmo_nday`/`tmo_next`)
-- ARGV[22] the T-Mobile day as instants: three consecutive day starts (ms), the first at or before now by the
--          caller's clock, the day ending at midnight Pacific (computed by the caller with the tz database)
-- ARGV[23] segments of this job's text (T-Mobile counts segments, and spend)
-- ARGV[24] the spend terms (common.lua, spend_terms: the month, its end, the prices), or '' (nothing counted)
--
-- Spend (common.lua, "Spend"): a reservation counts its text's cost, a lookup the caller is sent to make counts the
-- lookup's, and a purchase decision its numbers', each in the step that decides it. With a limit set, a job whose
-- text (or lookup) would pass it is parked until the next month (state S|<attempt>|<due>, counted in the batch's
-- `spend`, its job in `{c:ID}:spendwait` so that raising the limit releases it at once: spend_release.lua), and a
-- purchase is sized to what the limit still allows: no number is bought that the limit would not let send a text.
-- The first job parked in a month reports `customer.spend_limit_reached`; the reservation that brings spend to 80 %
-- reports `customer.spend_warning`.
--
-- Consent (common.lua, "Consent reviews"), read with the customer's settings: with `consent` = '1' a recipient
-- without an opt-in on record ends failed ('no_consent') without a slot; while the recipient's suspected revocation
-- waits for a person (and the customer holds, `review` ≠ 'send'), the job is held (state H|<attempt>|<recheck>,
-- counted in `held`, in the tenant's held set and in the schedule) until the review ends; a review nobody decided by
-- its deadline is honoured as the revocation it may be (opted out, `via` review_deadline). Their keys (`{c:ID}:review`,
-- `{c:ID}:consent`, `{c:ID}:held:<recipient>`, keys.rs) are built from the cfg key's `{c:ID}:` only when the customer
-- uses them, so a send pays for no key or argument it does not read.
--
-- The carriers' limits (carriers.rs), read from the customer's cfg: when the customer looks lines up (`lookup`, or
-- a T-Mobile or AT&T cap), the recipient's line comes from the cache — none cached: {'lookup'}, the caller looks it
-- up and calls again with it; a landline or invalid number ends `failed` ('unreachable: …') without a slot. Then the
-- caps: the campaign's messages per second (`cap_mps`), AT&T's per minute (`cap_att`), T-Mobile's segments per day
-- (`cap_tmo`), and caps Twilio reported spent (`spent_tmo`, `spent_att`, `spent_all`: until when). An unknown line
-- counts against every carrier cap. A job a cap holds is parked (state C|<attempt>|<due>|<cap>, counted in
-- `capped`, `capped:<cap>`, latest due in `capped_until:<cap>`) until the cap renews, paced (`pace:<cap>` in cfg)
-- so held jobs come back at the cap's own rate rather than all at once. A reservation counts in the caps it is
-- under; one made in the last 10 s of a T-Mobile day (a send may still be on its way at midnight) counts in the
-- next day too.
--
-- Before a number is chosen, two rules of the tenant's clock, both on Redis time: a job of a batch whose `expires`
-- (ms) has passed ends `expired` (e|) without a send; a job inside a quiet period is parked until the period ends
-- (state Q|<attempt>|<due>|<zone>, counted in the batch's `quiet` and `quiet:<zone>`, the latest due kept in
-- `quiet_until:<zone>`), due no later than the batch's expiry. An ambiguous earlier attempt is resolved first: it
-- may have been sent.
-- Returns one of:
--   {'ok', number, resid, now, attempt}        slot reserved; state is now r|number|resid|now|attempt
--   {'done', sid} | {'terminal', kind}         nothing to do (job removed from in-flight)
--   {'lost'}                                   the caller's lease is gone: another worker may have the job
--   {'opted_out'} | {'cancelled'} | {'orphan'} job finished here (orphan: its batch no longer exists)
--   {'expired'}                                job finished here: the batch's expiry passed
--   {'quiet', due, zone}                       job parked until quiet hours end in `zone`
--   {'lookup'}                                 the recipient's line is needed and not cached (nothing changed)
--   {'unreachable', reason}                    job failed here: a landline or invalid number
--   {'capped', due, cap}                       job parked until the carrier cap `cap` renews
--   {'held', recheck}                          job held while the tenant's suspected revocation is reviewed
--   {'spend', due}                             job parked: its text would pass the customer's monthly spend limit
--   {'frequency', due}                         job parked: the tenant had the customer's most texts in its window
--   {'paused', due}                            job parked: its batch is paused (state P|<attempt>|<due>, counted in
--                                              `pausedjobs`, listed in `<batch>:pw` for the resume)
--   {'no_consent'}                             job failed here: no opt-in on record and the customer requires one
--   {'ambiguous', number, resid, ms, attempt, now}   an earlier attempt may have been sent
--   {'full', numbers, pending_intents, max_numbers, earliest_free_ms, oldest_intent_ms, now, job state, orphans}
--                                              orphans: old unsettled reservations; while there are any, nobody
--                                              buys (they may free capacity once resolved)
--   {'intents', now, backlog, free, id...}    (locked mode) the caller must buy one number per intent id now
--                                              (intent `<prefix><i>`, FriendlyName `<name prefix><id>`)
--   {'lost_lock'}                              (locked mode) the lock is no longer ours

local cfg, pool, optouts, batch, state, failures, inflight, intents, lock, unsent =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local recipient, member = ARGV[1], ARGV[2]
local window_ms, quota, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local wprefix, rprefix, sprefix = ARGV[6], ARGV[7], ARGV[8]
local retention = tonumber(ARGV[9])
local mode, token, intent_prefix, name_prefix, expect = ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]
local orphan_ms, room = tonumber(ARGV[15]), tonumber(ARGV[16] or '-1')
local quiet, spread = ARGV[17] or '', tonumber(ARGV[18] or '0')
local hint, lprefix, cprefix = ARGV[19] or '', ARGV[20] or '', ARGV[21] or ''
local days, segments = ARGV[22] or '', tonumber(ARGV[23] or '1') or 1
local terms = spend_terms(ARGV[24])
-- A held job is looked at again after this long even if no review ends (the review's end releases it at once).
local HOLD_RECHECK_MS = 3600000
local LOOKUP_EPOCH_MS = 30 * 86400000
local UNREACHABLE = { l = 'unreachable: landline', i = 'unreachable: invalid number', n = 'unreachable: not a messaging line' }

local now = now_ms()

if not redis.call('ZSCORE', inflight, member) then
  return {'lost'}
end
local b = redis.call('HMGET', batch, 'total', 'cancel', 'state', 'expires', 'ev', 'id', 'paused', 'urgent')
events_for(KEYS[13], b[5], b[6])
if not b[1] then
  redis.call('ZREM', inflight, member)
  return {'orphan'}
end
if b[3] == 'complete' then
  -- Every job of the batch already ended (its states are gone): a leftover copy must not send.
  redis.call('ZREM', inflight, member)
  return {'terminal', 'c'}
end

local st = redis.call('HGET', state, recipient)
local attempt = '0'
if st then
  local kind = string.sub(st, 1, 1)
  if kind == 'd' then
    redis.call('ZREM', inflight, member)
    return {'done', string.sub(st, 3)}
  elseif is_terminal(st) then
    redis.call('ZREM', inflight, member)
    return {'terminal', kind}
  end
  local p = split(st)
  if kind == 'r' then
    if st ~= expect then
      return {'ambiguous', p[2], p[3], p[4], p[5], now}
    end
    -- The caller listed Twilio and the earlier attempt never arrived: give its slot back before reserving anew.
    release_slot(wprefix, unsent, st)
    attempt = p[5]
    st = 'w|' .. attempt .. '|unsent'
    redis.call('HSET', state, recipient, st)
  else
    attempt = p[2]
  end
end

if b[2] == '1' then
  return {'cancelled', finish(nil, batch, state, failures, inflight, recipient, member, st, 'x', '', retention, now)}
end
if redis.call('SISMEMBER', optouts, recipient) == 1 then
  return {'opted_out', finish(counted_in(cfg, b[2]), batch, state, failures, inflight, recipient, member, st, 'o', '', retention, now)}
end
local expires = tonumber(b[4])

-- Parks the job until `due` (no later than the batch's expiry): state `<kind>|<attempt>|<due>[|<reason>]`, counted in
-- the batch's `counter` (and in `<counter>:<reason>` when there is a reason), the latest due kept in `until_field`
-- when one is named; out of flight and in the schedule. Every wait of this script (paused batch, quiet hours, review,
-- frequency cap, carrier cap, spend limit) parks this way. Returns the due time and the job.
local function park(kind, due, counter, reason, until_field)
  if expires and due > expires then due = expires end
  local job = job_of(member)
  leave_deferred(batch, st)
  local parked = kind .. '|' .. attempt .. '|' .. due
  if reason then parked = parked .. '|' .. reason end
  redis.call('HSET', state, recipient, parked)
  redis.call('HINCRBY', batch, counter, 1)
  if reason then redis.call('HINCRBY', batch, counter .. ':' .. reason, 1) end
  if until_field and (tonumber(redis.call('HGET', batch, until_field)) or 0) < due then
    redis.call('HSET', batch, until_field, due)
  end
  redis.call('ZREM', inflight, member)
  redis.call('ZADD', KEYS[12], due, job)
  return due, job
end
if expires and now >= expires then
  finish(counted_in(cfg, b[2]), batch, state, failures, inflight, recipient, member, st, 'e', '', retention, now)
  return {'expired'}
end
if b[7] == '1' then
  -- The batch is paused (deliverability, or by hand): its texts wait, on no number, until it is resumed
  -- (batch_pause.lua brings the ones listed in `<batch>:pw` due at once); looked at again hourly meanwhile.
  local due, job = park('P', now + 3600000, 'pausedjobs')
  redis.call('SADD', batch .. ':pw', job)
  redis.call('PEXPIRE', batch .. ':pw', retention * 1000)
  return {'paused', due}
end
for qs, qe, zone in string.gmatch(quiet, '(%d+),(%d+),([^;]+)') do
  qs, qe = tonumber(qs), tonumber(qe)
  if qs <= now and now < qe then
    local due = park('Q', qe + spread, 'quiet', zone, 'quiet_until:' .. zone)
    return {'quiet', due, zone}
  end
end

-- The customer's settings a send needs, and the caps' counters, in one read; what a reservation changes in them is
-- written back in one command (`put`, below).
local c = redis.call('HMGET', cfg, 'lookup', 'cap_tmo', 'cap_att', 'cap_mps', 'spent_tmo', 'spent_att', 'spent_all',
  'mps_s', 'mps_n', 'tmo_day', 'tmo_used', 'tmo_nday', 'tmo_next', 'att_x', 'current', 'resseq', 'review_n', 'review',
  'consent', 'spend_limit', 'spend_m', 'spend_u', 'spend_w', 'spend_r', 'freq_n', 'freq_ms')
-- This month's spend and the limit (nil: none, or no terms from the caller).
local spent = terms and spent_this_month(terms, c[21], c[22]) or 0
local limit = terms and tonumber(c[20]) or nil

-- Parks the job until the next month (or the limit is raised: spend_release.lua); the first one of a month reports
-- that the limit is reached.
local function park_for_spend()
  local due, job = park('S', terms.next_ms + spread, 'spend')
  local waiting = customer_key(cfg, 'spendwait')
  redis.call('SADD', waiting, job)
  -- Its jobs come due next month anyway: the set is only for a change of the limit before then.
  redis.call('PEXPIREAT', waiting, terms.next_ms + 86400000)
  if c[24] ~= terms.month then
    redis.call('HSET', cfg, 'spend_r', terms.month)
    emit('customer.spend_limit_reached', 'b', EV and EV.batch or '', 'month', terms.month, 'spent_usd', usd(spent),
      'limit_usd', usd(limit))
  end
  return {'spend', due}
end
-- Consent: no text without an opt-in on record when the customer requires one; a tenant whose reply may have
-- revoked consent is held until a person decides. Neither costs a command unless the customer uses it.
if c[19] == '1' and redis.call('SISMEMBER', customer_key(cfg, 'consent'), recipient) == 0 then
  return {'no_consent', finish(counted_in(cfg, b[2]), batch, state, failures, inflight, recipient, member, st, 'f', 'no_consent', retention, now)}
end
local review = (tonumber(c[17]) or 0) > 0 and c[18] ~= 'send' and redis.call('HGET', customer_key(cfg, 'review'), recipient)
if review then
  -- Nobody decided by the deadline (10 business days from receipt, the rule's limit for honouring a revocation):
  -- it is honoured as one.
  local r = cjson.decode(review)
  if (tonumber(r.deadline_ms) or 0) > 0 and now >= tonumber(r.deadline_ms) then
    redis.call('SADD', optouts, recipient)
    record_opt(customer_key(cfg, 'optrec'), recipient, 'opt_out', r.words or '', r.number or '', tonumber(r.at_ms) or now,
      r.sid or '', { via = 'review_deadline', recorded_ms = now })
    emit('recipient.opted_out', 'r', recipient, 'via', 'review_deadline', 'words', r.words or '')
    end_review(customer_key(cfg, 'review'), cfg, recipient)
    release_held(customer_key(cfg, 'held:') .. recipient, KEYS[12], now)
    return {'opted_out', finish(counted_in(cfg, b[2]), batch, state, failures, inflight, recipient, member, st, 'o', '', retention, now)}
  end
  local due, job =
    park('H', math.min(now + HOLD_RECHECK_MS, math.max(tonumber(r.deadline_ms) or 0, now + 1000)), 'held')
  redis.call('SADD', customer_key(cfg, 'held:') .. recipient, job)
  return {'held', due}
end
-- The tenant's frequency cap across batches (`freq_n` texts per `freq_ms`; urgent batches exempt): the tenant's
-- texts in the window are a ZSET of jobs scored by reservation time (`{c:ID}:ft:<recipient>`, written below with
-- the slot); a text over the cap waits for the oldest to age out (state F|<attempt>|<due>, counted in `freq`).
local freq_n, freq_ms = tonumber(c[25]), tonumber(c[26])
local freq_key = nil
if freq_n and freq_ms and b[8] ~= '1' then
  freq_key = customer_key(cfg, 'ft:') .. recipient
  redis.call('ZREMRANGEBYSCORE', freq_key, '-inf', now - freq_ms)
  if redis.call('ZCARD', freq_key) >= freq_n and not redis.call('ZSCORE', freq_key, job_of(member)) then
    local oldest = redis.call('ZRANGE', freq_key, 0, 0, 'WITHSCORES')
    local due = park('F', tonumber(oldest[2]) + freq_ms + 1 + spread % 60000, 'freq', nil, 'freq_until')
    return {'frequency', due}
  end
end

local cap_tmo, cap_att, cap_mps = tonumber(c[2]), tonumber(c[3]), tonumber(c[4])
local line = nil
if c[1] == '1' or cap_tmo or cap_att then
  local lepoch = math.floor(now / LOOKUP_EPOCH_MS)
  local lbucket, lfield = string.sub(recipient, -3), string.sub(recipient, 1, -4)
  local lcur = lprefix .. lepoch .. ':' .. lbucket
  if hint ~= '' then
    line = hint
    -- An unknown line is not kept: a later batch asks again.
    if hint ~= 'u' then
      if redis.call('HSET', lcur, lfield, hint) == 1 then
        redis.call('HINCRBY', cfg, 'mix:' .. hint, 1)
        redis.call('HINCRBY', cfg, 'mix', 1)
      end
      redis.call('PEXPIRE', lcur, 2 * LOOKUP_EPOCH_MS + 1000)
    end
  else
    line = redis.call('HGET', lcur, lfield) or redis.call('HGET', lprefix .. (lepoch - 1) .. ':' .. lbucket, lfield)
    if not line then
      -- The lookup is paid for when it is decided: counted now, or not made when it and the text would pass the
      -- limit.
      if terms then
        if limit and spent + terms.lookup + text_cost(terms, segments, nil) > limit then return park_for_spend() end
        redis.call('HSET', cfg, 'spend_m', terms.month, 'spend_u', spent + terms.lookup)
      end
      return {'lookup'}
    end
  end
  if UNREACHABLE[line] then
    release_slot(wprefix, unsent, st)
    return {'unreachable', UNREACHABLE[line], finish(counted_in(cfg, b[2]), batch, state, failures, inflight, recipient, member, st, 'f', UNREACHABLE[line], retention, now)}
  end
end
local is_tmo, is_att = line == 't' or line == 'u', line == 'a' or line == 'u'
local day_start, day_end, next_end = nil, nil, nil
do
  local d = {}
  for v in string.gmatch(days, '%d+') do d[#d + 1] = tonumber(v) end
  if #d == 3 then
    if now >= d[2] then day_start, day_end = d[2], d[3] else day_start, day_end, next_end = d[1], d[2], d[3] end
  end
end
local hold, hold_cap, hold_step = nil, nil, 0
-- step: pacing of held jobs (ms between two); 0: they come due at `until` plus their spread (a day's renewal) or
-- a part of it (a short hold Twilio reported).
local hold_spread = 0
local function held(until_ms, name, step, spread_ms)
  if not hold or until_ms > hold then hold, hold_cap, hold_step, hold_spread = until_ms, name, step, spread_ms end
end
local att_key = cprefix .. 'att'
local spent_all = tonumber(c[7])
if spent_all and spent_all > now then held(spent_all, 'campaign throughput (Twilio 30022)', 0, spread % 2000) end
-- The per-second cap counts whole seconds of Redis's clock in two cfg fields (`mps_s` the second, `mps_n` its sends):
-- read with the settings and written back with the reservation, no command of its own (Twilio queues a burst across
-- a second's boundary rather than refusing it).
local second = math.floor(now / 1000)
local mps_used = 0
if tonumber(c[8]) == second then mps_used = tonumber(c[9]) or 0 end
if cap_mps and mps_used >= cap_mps then
  held((second + 1) * 1000, 'per-second cap', math.floor(1000 / cap_mps), 0)
end
if is_att then
  local spent = tonumber(c[6])
  if spent and spent > now then held(spent, 'AT&T per-minute cap (Twilio 30022)', 0, spread % 2000) end
  -- A log shorter than the cap cannot be at it: it is trimmed only when it might be (one command a send). Entries
  -- keep their reservation time unless the send took longer than the slack (commit.lua), so the log counts a
  -- minute and the slack.
  local span = 60000 + CAP_MINUTE_SLACK_MS
  if cap_att and redis.call('LLEN', att_key) >= cap_att and window_count(att_key, now - span) >= cap_att then
    held(window_oldest(att_key) + span, 'AT&T per-minute cap', math.floor(60000 / cap_att), 0)
  end
end
-- T-Mobile's day in cfg fields: `tmo_day` (a day's start, ms) and `tmo_used` (its segments), and `tmo_nday` /
-- `tmo_next`: segments already counted in the day after (a reservation in a day's last 10 s counts in both).
local tmo_used = 0
if day_start then
  if tonumber(c[10]) == day_start then tmo_used = tonumber(c[11]) or 0
  elseif tonumber(c[12]) == day_start then tmo_used = tonumber(c[13]) or 0 end
end
if is_tmo then
  local spent = tonumber(c[5])
  if spent and spent > now then held(spent, 'T-Mobile daily cap (Twilio 30023)', 0, spread) end
  if cap_tmo and day_start and tmo_used + segments > cap_tmo then held(day_end, 'T-Mobile daily cap', 0, spread) end
end
if hold then
  -- Held jobs come back at the cap's rate (`pace`), or spread after a day's renewal, not all at once.
  local pace_field = 'pace:' .. hold_cap
  local due = hold
  if hold_step > 0 then
    due = math.max(hold, tonumber(redis.call('HGET', cfg, pace_field)) or 0)
    redis.call('HSET', cfg, pace_field, due + hold_step)
  else
    due = hold + hold_spread
  end
  due = park('C', due, 'capped', hold_cap, 'capped_until:' .. hold_cap)
  return {'capped', due, hold_cap}
end

local cost = terms and text_cost(terms, segments, line) or 0
if limit and spent + cost > limit then return park_for_spend() end

-- What a reservation changes in cfg, as field/value pairs for one HSET: the reservation id, the number being
-- filled, and the caps it counts in.
local function put(resid, current_now)
  local f = {'resseq', resid}
  if current_now then f[#f + 1] = 'current'; f[#f + 1] = current_now end
  if cap_mps then f[#f + 1] = 'mps_s'; f[#f + 1] = second; f[#f + 1] = 'mps_n'; f[#f + 1] = mps_used + 1 end
  if terms then
    f[#f + 1] = 'spend_m'; f[#f + 1] = terms.month; f[#f + 1] = 'spend_u'; f[#f + 1] = spent + cost
    if spend_warns(terms, limit, spent + cost, c[23]) then
      f[#f + 1] = 'spend_w'; f[#f + 1] = terms.month
      emit('customer.spend_warning', 'b', EV and EV.batch or '', 'month', terms.month, 'spent_usd', usd(spent + cost),
        'limit_usd', usd(limit))
    end
  end
  if is_att and cap_att then
    redis.call('RPUSH', att_key, window_entry(now, resid))
    -- The log's expiry is refreshed once a second (`att_x`), to outlive every entry pushed in that second.
    if tonumber(c[14]) ~= second then
      redis.call('PEXPIRE', att_key, 60000 + CAP_MINUTE_SLACK_MS + 1000)
      f[#f + 1] = 'att_x'; f[#f + 1] = second
    end
  end
  if is_tmo and cap_tmo and day_start then
    f[#f + 1] = 'tmo_day'; f[#f + 1] = day_start; f[#f + 1] = 'tmo_used'; f[#f + 1] = tmo_used + segments
    if next_end and now >= day_end - 10000 then
      local next_used = 0
      if tonumber(c[12]) == day_end then next_used = tonumber(c[13]) or 0 end
      f[#f + 1] = 'tmo_nday'; f[#f + 1] = day_end; f[#f + 1] = 'tmo_next'; f[#f + 1] = next_used + segments
    end
  end
  redis.call('HSET', cfg, unpack(f))
end

-- Capacity of one number right now; drops entries that have aged out of the window on the way.
local span = window_ms + window_slack(window_ms)
local horizon = now - span
local function available(number)
  local sent = window_count(wprefix .. number, horizon)
  -- Replies in the window (aged ones are trimmed when replies are recorded, and the key expires on its own).
  local limit = math.min(quota + redis.call('ZCOUNT', rprefix .. number, '(' .. horizon, '+inf'), cap)
  return limit - sent
end

-- Sticky senders live in one hash per window-long epoch (the current and the previous one are read), split into
-- 1,000 buckets by the recipient's last three digits so each stays small enough for Redis's compact listpack
-- encoding (about 25 bytes a recipient instead of about 70); the field is the number without those digits.
local epoch = math.floor(now / window_ms)
local bucket, field = string.sub(recipient, -3), string.sub(recipient, 1, -4)
local sticky_cur = sprefix .. epoch .. ':' .. bucket
local sticky_prev = sprefix .. (epoch - 1) .. ':' .. bucket

local chosen, new_current = nil, nil
local numbers = nil -- the pool, once read
-- A sticky entry is the number, or `<number>|<batch id>` for a batch that records events (a reply names the batch it
-- most likely answers: record_inbound.lua).
local sticky = redis.call('HGET', sticky_cur, field) or redis.call('HGET', sticky_prev, field)
if sticky then sticky = string.match(sticky, '^[^|]*') end
if sticky and redis.call('ZSCORE', pool, sticky) and available(sticky) > 0 then
  chosen = sticky
end

if not chosen then
  -- Numbers fill one after another, so the current number almost always has room: try it alone first, and scan
  -- the pool only when it is full.
  local current = c[15]
  if current and current ~= sticky and available(current) > 0 then
    chosen = current
  else
    numbers = redis.call('ZRANGE', pool, 0, -1)
    for i = 1, #numbers do
      local n = numbers[i]
      if n ~= current and n ~= sticky and available(n) > 0 then
        chosen = n
        new_current = n
        break
      end
    end
  end
end

if chosen then
  local resid = (tonumber(c[16]) or 0) + 1
  window_push(wprefix .. chosen, now, resid, span)
  put(resid, new_current)
  redis.call('ZADD', unsent, now, chosen .. '|' .. resid)
  if EV then redis.call('HSET', sticky_cur, field, chosen .. '|' .. EV.batch)
  else redis.call('HSET', sticky_cur, field, chosen) end
  redis.call('PEXPIRE', sticky_cur, 2 * window_ms + 1000)
  if freq_key then
    redis.call('ZADD', freq_key, now, job_of(member))
    redis.call('PEXPIRE', freq_key, freq_ms + 1000)
  end
  leave_deferred(batch, st)
  redis.call('HSET', state, recipient, 'r|' .. chosen .. '|' .. resid .. '|' .. now .. '|' .. attempt)
  return {'ok', chosen, tostring(resid), tostring(now), attempt}
end

-- No capacity anywhere.
numbers = numbers or redis.call('ZRANGE', pool, 0, -1)
local max_numbers = tonumber(redis.call('HGET', cfg, 'max_numbers')) or 0
local earliest = -1
for i = 1, #numbers do
  local oldest = window_oldest(wprefix .. numbers[i])
  if oldest then
    local free_at = oldest + span
    if earliest < 0 or free_at < earliest then earliest = free_at end
  end
end
-- Unsettled reservations older than any live send can take belong to workers that died mid-send. Entries older
-- than a window no longer hold any quota and are dropped.
redis.call('ZREMRANGEBYSCORE', unsent, '-inf', now - window_ms)
local orphans = redis.call('ZCOUNT', unsent, '-inf', now - orphan_ms)
local pending = redis.call('HVALS', intents)
local oldest_intent = -1
for i = 1, #pending do
  local created = tonumber(split(pending[i])[1]) or 0
  if oldest_intent < 0 or created < oldest_intent then oldest_intent = created end
end

if mode == 'locked' then
  if redis.call('GET', lock) ~= token then
    return {'lost_lock'}
  end
  local allowed = max_numbers - #numbers
  if room >= 0 and room < allowed then allowed = room end
  if #pending == 0 and orphans == 0 and allowed > 0 then
    -- This job wants a slot whatever the counts say (it is in flight without one).
    local backlog = math.max(backlog_now(cfg, KEYS[11], KEYS[12], inflight, unsent, now), 1)
    if line then
      -- Only messages that could go now need a number: of the jobs not yet looked at, leave out the share the
      -- customer's looked-up recipients say are unreachable, and T-Mobile's beyond what is left of its day. With
      -- fewer than 100 looked up, the share is too rough to buy on (one number's quota of error is a surplus
      -- number): only this job counts, and the pool grows a number at a time until the share is known.
      local m = redis.call('HMGET', cfg, 'mix', 'mix:t', 'mix:l', 'mix:i', 'mix:n')
      local total = tonumber(m[1]) or 0
      if total < 100 then
        backlog = 1
      else
        local share = function(i) return (tonumber(m[i]) or 0) / total end
        local sendable = backlog * (1 - share(3) - share(4) - share(5))
        local tmo = backlog * share(2)
        local room = nil
        local spent = tonumber(c[5])
        if spent and spent > now then room = 0
        elseif cap_tmo and day_start then
          room = math.max(cap_tmo - tmo_used, 0) / segments
        end
        if room and tmo > room then sendable = sendable - (tmo - room) end
        backlog = math.max(math.floor(sendable + 0.5), 1)
      end
    end
    local free = 0
    for i = 1, #numbers do
      free = free + math.max(available(numbers[i]), 0)
    end
    -- Whole numbers now; the last, partial one only once nothing else is left to wait for (the pool is full here, so
    -- a backlog under one number's quota buys it): a number is never bought for jobs that may fail before it fills.
    local need = math.floor((backlog - free) / quota)
    if need < 1 and backlog > free then need = 1 end
    if need > allowed then need = allowed end
    if need >= 1 and limit then
      -- Under a spend limit, only numbers the limit lets send: the k-th new number sends only after the free slots
      -- and k-1 whole numbers' quota are used, so k numbers need money for themselves and for that many texts
      -- plus one (at this job's cost, the least a text of the backlog is likely to cost).
      local per_text = math.max(cost, 1)
      local k = need
      while k >= 1 and spent + k * terms.number + (free + (k - 1) * quota + 1) * per_text > limit do k = k - 1 end
      if k < 1 then return park_for_spend() end
      need = k
    end
    if need >= 1 then
      local out = {'intents', now, backlog, free}
      for i = 1, need do
        local id = intent_prefix .. string.format('%03x', i)
        redis.call('HSET', intents, id, now .. '|' .. name_prefix .. id)
        out[#out + 1] = id
      end
      if terms then
        local after = spent + need * terms.number
        local f = {'spend_m', terms.month, 'spend_u', after}
        if spend_warns(terms, limit, after, c[23]) then
          f[#f + 1] = 'spend_w'; f[#f + 1] = terms.month
          emit('customer.spend_warning', 'b', EV and EV.batch or '', 'month', terms.month, 'spent_usd', usd(after),
            'limit_usd', usd(limit))
        end
        redis.call('HSET', cfg, unpack(f))
      end
      return out
    end
  end
end
return {'full', #numbers, #pending, max_numbers, earliest, oldest_intent, now, st or '', orphans}
