-- common.lua: helpers prepended to every Messenger script (scripts.rs concatenates them), so the rules for job
-- states and batch counters are written once. Defines functions and constants only; touches no key of
-- its own.
--
-- Job states, stored in the batch's state hash (`{c:ID}:b:<batch>:st`, field = recipient E.164):
--   (absent)                       never attempted
--   r|<number>|<resid>|<ms>|<n>    a quota slot is reserved and the send may be under way; found again by a new
--                                  delivery of the job it is *ambiguous* and must be resolved against Twilio
--   w|<n>|<reason>                 waiting for a retry; holds no quota slot
--   D|<n>                          deferred: the customer is at max numbers and every number is full
--   Q|<n>|<until ms>|<zone>        waiting for the end of quiet hours in the recipient's zone (reserve.lua)
--   C|<n>|<until ms>|<cap>         waiting for a carrier cap to renew (reserve.lua)
--   H|<n>|<recheck ms>             held while the tenant's suspected revocation waits for a person (reserve.lua);
--                                  released at once when the review ends (release_held), or checked again then
--   d|<sid>                        sent (terminal)
--   f|<reason>                     failed (terminal)
--   o|                             opted out (terminal)
--   x|                             cancelled (terminal)
--   e|                             expired: not sent by the batch's expiry (terminal)
-- <n> counts transient failures so far.
--
-- A job in flight is the member `<job>#<lease token>` of the customer's in-flight set: every fetch hands a job out
-- under a fresh token, so a worker whose lease expired (and whose job was fetched again by someone else) no longer
-- matches, and scripts that act for it change nothing (renew reports the job lost, reserve says 'lost', retry
-- says 'stale').

-- A job member is `<batch local id>|<recipient>`, or `<batch local id>|<recipient>|<values>` for a personalised
-- batch (the merge-field values, in the batch's order of variables; they may contain any character but the unit
-- separator, including `|` and `#`).

-- The job member of an in-flight member (`<job>#<token>` → `<job>`; the token holds no `#`).
local function job_of(lease)
  return string.match(lease, '^(.*)#[^#]*$') or lease
end

-- The recipient of a job member.
local function recipient_of(job)
  return string.match(job, '^[^|]*|([^|]*)')
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function split(s)
  local out, start = {}, 1
  while true do
    local i = string.find(s, '|', start, true)
    if not i then
      out[#out + 1] = string.sub(s, start)
      return out
    end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end

local COUNTER = { d = 'sent', f = 'failed', o = 'opted_out', x = 'cancelled', e = 'expired' }

-- A job leaving the deferred state stops counting as deferred; one leaving quiet hours or a carrier cap stops
-- counting as waiting for them (in total, and in its zone or cap).
local function leave_deferred(batch, prev)
  if not prev then return end
  local kind = string.sub(prev, 1, 1)
  if kind == 'D' then
    redis.call('HINCRBY', batch, 'deferred', -1)
  elseif kind == 'Q' then
    redis.call('HINCRBY', batch, 'quiet', -1)
    redis.call('HINCRBY', batch, 'quiet:' .. (split(prev)[4] or ''), -1)
  elseif kind == 'C' then
    redis.call('HINCRBY', batch, 'capped', -1)
    redis.call('HINCRBY', batch, 'capped:' .. (split(prev)[4] or ''), -1)
  elseif kind == 'H' then
    redis.call('HINCRBY', batch, 'held', -1)
  elseif kind == 'S' then
    redis.call('HINCRBY', batch, 'spend', -1)
  elseif kind == 'P' then
    redis.call('HINCRBY', batch, 'pausedjobs', -1)
  elseif kind == 'F' then
    redis.call('HINCRBY', batch, 'freq', -1)
  end
end

-- Spend (docs/DESIGN.md, "Spend limit"): what a customer spent this month, counted in micro-dollars in cfg fields
-- (`spend_m` the month, `spend_u` its spend, `spend_w` / `spend_r` the month the 80 % warning / the limit was
-- reported) in the same step as the reservation or purchase decision that spends it, and checked there against
-- `spend_limit` (micro-dollars, '' = none), so no race, crash or failover lets spend pass the limit. The caller
-- passes the terms as one argument, computed from its prices and the customer's time zone:
-- `<month>,<next month's start ms>,<segment>,<number>,<lookup>,<T-Mobile fee>,<AT&T fee>,<Verizon fee>` (fees per
-- segment; all micro-dollars). '' = no terms (nothing counted).
local function spend_terms(arg)
  local v = {}
  for x in string.gmatch(arg or '', '[^,]+') do v[#v + 1] = x end
  if #v < 8 then return nil end
  return { month = v[1], next_ms = tonumber(v[2]) or 0, segment = tonumber(v[3]) or 0, number = tonumber(v[4]) or 0,
    lookup = tonumber(v[5]) or 0, fee = { t = tonumber(v[6]) or 0, a = tonumber(v[7]) or 0, v = tonumber(v[8]) or 0 } }
end

-- A text's cost: its segments at the segment price plus the carrier's surcharge where the line is known.
local function text_cost(terms, segments, line)
  return segments * (terms.segment + ((line and terms.fee[line]) or 0))
end

-- This month's spend from the cfg fields `spend_m` and `spend_u` (another month's spend counts as none).
local function spent_this_month(terms, month_field, spent_field)
  if month_field == terms.month then return tonumber(spent_field) or 0 end
  return 0
end

-- The 80 % warning, once a month: true when spend `after` a change reaches 80 % of `limit` and `warned` (the month
-- in `spend_w`) is not this month.
local function spend_warns(terms, limit, after, warned)
  return limit ~= nil and limit > 0 and warned ~= terms.month and after * 5 >= limit * 4
end

local function usd(micros) return string.format('%.4f', micros / 1000000) end

-- Events (docs/DESIGN.md, "Events"): what happened, for the customer's app, appended to the customer's stream
-- (`{c:ID}:events`) in the same atomic step as the change it reports, so an event is never lost and never
-- invented. A script that may report one calls events_for() with the stream key and the batch's `ev` and `id`
-- fields (set at creation when the customer records events); emit() does nothing otherwise. An entry is `t` (the
-- type) and fields of its data (`b` batch id, `r` recipient, `sid`, …); its stream id is its event id and time.
-- The stream keeps about EVENTS_MAX entries (trimmed by whole nodes as it grows) and EVENTS_RETENTION_MS of time
-- (trimmed when a batch completes).
local EVENTS_MAX, EVENTS_RETENTION_MS = 200000, 7 * 86400000
local EV = nil

local function events_for(stream, flag, batch_id)
  if flag == '1' and stream and stream ~= '' then EV = { key = stream, batch = batch_id or '' } end
end

local function emit(kind, ...)
  if EV then redis.call('XADD', EV.key, 'MAXLEN', '~', EVENTS_MAX, '*', 't', kind, ...) end
end

-- Appends a change of consent to the tenant's record (the last 50 kept): the evidence of what they asked, when, how,
-- and of which number. kind: 'opt_out' | 'opt_in' | 'suspected' | 'review_dismissed' | 'review_confirmed';
-- how: the words as written, or what reported it; extra: more fields (`via`: keyword, words, api, import, review,
-- twilio; `rule`, `source`, `note`, `evidence`; `recorded_ms` when the change (at `now`) was recorded later).
local function record_opt(records, tenant, kind, how, number, now, sid, extra)
  local history = {}
  local stored = redis.call('HGET', records, tenant)
  if stored then history = cjson.decode(stored) end
  local entry = { kind = kind, keyword = how, number = number, at_ms = now, sid = sid }
  for k, v in pairs(extra or {}) do
    if v ~= '' then entry[k] = v end
  end
  history[#history + 1] = entry
  while #history > 50 do table.remove(history, 1) end
  redis.call('HSET', records, tenant, cjson.encode(history))
end

-- Consent reviews (docs/DESIGN.md, "Consent"): a suspected revocation waits in the customer's `review` hash; cfg
-- `review_n` counts them, so the send path looks a tenant up only while there are any. While it waits, the
-- tenant's jobs are held (reserve.lua, state H|…): each is in `sched` and in the tenant's held set.

-- A key of the customer whose cfg key is `cfg` (`{c:ID}:cfg`): `{c:ID}:<suffix>`, same hash tag. For keys a script
-- touches only in rare cases (consent), so a common call carries no key it does not read (keys.rs keeps the names).
local function customer_key(cfg, suffix) return string.sub(cfg, 1, -4) .. suffix end

-- Ends the tenant's review, if one is open: 1 if it was.
local function end_review(reviews, cfg, tenant)
  if redis.call('HDEL', reviews, tenant) == 1 then
    redis.call('HINCRBY', cfg, 'review_n', -1)
    return 1
  end
  return 0
end

-- Makes the jobs listed in a set due now and empties it (the send path then decides for each): a tenant's jobs held
-- for a review, a paused batch's jobs, those the spend limit parked. A listed job no longer in the schedule is left
-- alone (ZADD XX). Returns how many were listed.
local function release_held(held, sched, now)
  local jobs = redis.call('SMEMBERS', held)
  for _, j in ipairs(jobs) do redis.call('ZADD', sched, 'XX', now, j) end
  if #jobs > 0 then redis.call('DEL', held) end
  return #jobs
end

-- Conversations (docs/DESIGN.md, "Conversations"): a tenant's thread with the customer, kept for every customer, in
-- one STRING per 30-day epoch (`{c:ID}:conv:<epoch>:<tenant E.164>`, keys.rs) of length-prefixed entries
-- `<bytes>:<entry>`, oldest first, each entry `<dir>|<at ms>|<our number>|<sid>|<batch>|<body>` (dir `o` out, `i` in,
-- `f` a text that could not be sent, its reason as the body; the body last, so it may hold any character). The
-- first entry of an epoch creates the string with its expiry in one command (`SET NX PX`, 2 × CONV_TTL_MS); later
-- ones APPEND (two commands). Past CONV_MAX_BYTES the oldest entries are dropped (rare: about 80 texts a month).
-- So the last 30 days of a thread are always in the current and the previous epoch's strings, which readers merge
-- (keys.rs `conversation_entries`). Written by the script that records the message (commit.lua for a text sent,
-- fail.lua for a failure, record_inbound.lua for a reply), so the thread and the events agree.
local CONV_MAX, CONV_TTL_MS, CONV_MAX_BYTES = 50, 30 * 86400000, 12000
-- The support desk's inbox: threads kept per customer (record_inbound.lua), and how many of a thread's newest entries
-- a reply searches for the text it answers.
local INBOX_MAX, CONV_SCAN = 100000, 10

-- The entries of a conversation string, oldest first.
local function conv_entries(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local colon = string.find(s, ':', i, true)
    local len = colon and tonumber(string.sub(s, i, colon - 1))
    if not len then break end
    out[#out + 1] = string.sub(s, colon + 1, colon + len)
    i = colon + len + 1
  end
  return out
end

local function converse(key, dir, at_ms, number, body, sid, batch)
  local e = dir .. '|' .. at_ms .. '|' .. number .. '|' .. sid .. '|' .. batch .. '|' .. body
  local rec = #e .. ':' .. e
  if redis.call('SET', key, rec, 'NX', 'PX', 2 * CONV_TTL_MS) then return end
  if redis.call('APPEND', key, rec) > CONV_MAX_BYTES then
    -- Keep the newest entries, at most CONV_MAX and about half the bound (the newest one always).
    local entries, keep, size = conv_entries(redis.call('GET', key)), {}, 0
    for i = #entries, math.max(1, #entries - CONV_MAX + 1), -1 do
      size = size + #entries[i]
      if size > CONV_MAX_BYTES / 2 and #keep > 0 then break end
      table.insert(keep, 1, #entries[i] .. ':' .. entries[i])
    end
    redis.call('SET', key, table.concat(keep), 'KEEPTTL')
  end
end

-- Finalises the batch when every accepted job is terminal: the per-recipient states are dropped and the record
-- (counts and failure reasons) is kept for `retention_s`. Returns 1 if this call completed the batch.
local function maybe_complete(batch, state, failures, retention_s, now)
  local f = redis.call('HMGET', batch, 'total', 'enqueued', 'sent', 'failed', 'opted_out', 'cancelled', 'expired',
    'state')
  local total = tonumber(f[1]) or 0
  local done = 0
  for i = 3, 7 do done = done + (tonumber(f[i]) or 0) end
  if total > 0 and tonumber(f[2]) == total and done >= total and f[8] ~= 'complete' then
    redis.call('HSET', batch, 'state', 'complete', 'completed_ms', now)
    redis.call('DEL', state)
    redis.call('EXPIRE', batch, retention_s)
    redis.call('EXPIRE', failures, retention_s)
    if EV then
      emit('batch.completed', 'b', EV.batch, 'total', total, 'sent', f[3] or 0, 'failed', f[4] or 0,
        'opted_out', f[5] or 0, 'cancelled', f[6] or 0, 'expired', f[7] or 0)
      redis.call('XTRIM', EV.key, 'MINID', '~', now - EVENTS_RETENTION_MS)
    end
    return 1
  end
  return 0
end

-- The customer's `open` counter (in its cfg hash) is the number of enqueued jobs that are not terminal yet, over
-- batches that are not cancelled: enqueue_chunk.lua adds a chunk's jobs, finish() takes one off, cancel.lua takes
-- off what a batch still had pending when it was cancelled (its jobs no longer count), and fetch.lua resets it to
-- zero whenever the customer has no job anywhere (which also heals any drift). The purchase decision sizes a
-- purchase from it: jobs of a cancelled batch still sitting in the queue never make anyone buy a number.

-- The cfg hash whose `open` counter a job of this batch counts in: nil once the batch is cancelled. (The caller
-- has read the batch's `cancel` field already.)
local function counted_in(cfg, cancel_flag)
  if cancel_flag == '1' then return nil end
  return cfg
end

-- Moves a job to a terminal state and updates the batch counters in the same atomic step.
-- kind: 'd' sent (detail = message sid), 'f' failed (detail = reason), 'o' opted out, 'x' cancelled, 'e' expired.
-- open: counted_in(cfg, <the batch's cancel flag>).
local function finish(open, batch, state, failures, inflight, recipient, member, prev, kind, detail, retention_s, now)
  if open then
    redis.call('HINCRBY', open, 'open', -1)
  end
  leave_deferred(batch, prev)
  redis.call('HSET', state, recipient, kind .. '|' .. detail)
  redis.call('HINCRBY', batch, COUNTER[kind], 1)
  if kind == 'f' then
    redis.call('HINCRBY', batch, 'reason:' .. detail, 1)
    redis.call('HSET', failures, recipient, detail)
  end
  if EV then
    if kind == 'd' then emit('message.sent', 'b', EV.batch, 'r', recipient, 'sid', detail, 'from', EV.from or '')
    elseif kind == 'f' then emit('message.failed', 'b', EV.batch, 'r', recipient, 'reason', detail)
    elseif kind == 'e' then emit('message.expired', 'b', EV.batch, 'r', recipient) end
  end
  redis.call('ZREM', inflight, member)
  return maybe_complete(batch, state, failures, retention_s, now)
end

-- A number's send window is a LIST of `<ms>:<resid>` entries, oldest first. Every entry is appended with the
-- current Redis time (a commit re-appends its entry with the commit time), so the list stays sorted and entries
-- that aged out leave from the head. A list of a few hundred short entries keeps Redis's compact listpack encoding:
-- about 20 bytes an entry, against about 105 in a sorted set.
local function window_entry(ms, resid)
  return ms .. ':' .. resid
end

-- Appends an entry; an idle window expires on its own once every entry would have aged out.
local function window_push(wk, ms, resid, window_ms)
  redis.call('RPUSH', wk, window_entry(ms, resid))
  redis.call('PEXPIRE', wk, window_ms + 1000)
end

local function entry_time(e)
  return tonumber(string.sub(e, 1, string.find(e, ':', 1, true) - 1))
end

-- Entries still inside the window ending now (entries at or before `horizon` are dropped on the way).
local function window_count(wk, horizon)
  while true do
    local head = redis.call('LINDEX', wk, 0)
    if not head or entry_time(head) > horizon then break end
    redis.call('LPOP', wk)
  end
  return redis.call('LLEN', wk)
end

-- A send reaches Twilio some time after its slot was reserved, and the quota must hold on Twilio's clock. So an entry
-- counts for the window plus this slack (1 s, or a hundredth of a shorter window): an entry keeps its reservation
-- time when the send took less than the slack (Twilio's time is then inside the span counted), and a commit re-stamps
-- it with the commit time only when the send took longer — one command a text saved in the common case.
local function window_slack(window_ms)
  return math.min(1000, math.floor(window_ms / 100))
end

-- Time of the oldest entry, or nil.
local function window_oldest(wk)
  local head = redis.call('LINDEX', wk, 0)
  if head then return entry_time(head) end
  return nil
end

-- AT&T's per-minute log keeps an entry's reservation time unless its send took longer than this (commit.lua
-- re-stamps only those), and the reserve counts a minute plus this: a send that reaches Twilio up to this long after
-- its reservation still counts in every 60 s of Twilio's clock it falls in, without two commands a commit.
local CAP_MINUTE_SLACK_MS = 1000

-- A reserved slot lives in two places: an entry in the number's window (what counts against the quota) and an
-- entry `<number>|<resid>` in the customer's `unsent` set, until the send's outcome is known. An old entry in
-- `unsent` is a slot whose worker died mid-send: it may or may not have been used, and until that is resolved it
-- must not make anyone buy a number.

-- Removes the slot a job's state `r|…` holds, from its window and from `unsent`; nothing for any other state.
local function release_slot(wprefix, unsent, st)
  if not (st and string.sub(st, 1, 1) == 'r') then return end
  local p = split(st)
  redis.call('LREM', wprefix .. p[2], -1, window_entry(p[4], p[3]))
  redis.call('ZREM', unsent, p[2] .. '|' .. p[3])
end

-- Jobs of a customer that want a slot now: ready, scheduled and due, and in flight without a slot. Counted from the
-- queues, and also from the `open` counter minus the jobs parked for later and the slots already held; the smaller
-- of the two (the counter leaves out cancelled batches, and the queues bound the counter if it ever drifts). Used to
-- size purchases and to keep enough numbers when releasing idle ones.
local function backlog_now(cfg, queue, sched, inflight, unsent, now)
  local held = redis.call('ZCARD', unsent)
  local by_queue = redis.call('LLEN', queue) + redis.call('ZCOUNT', sched, '-inf', now)
    + math.max(redis.call('ZCARD', inflight) - held, 0)
  local open = tonumber(redis.call('HGET', cfg, 'open'))
  if open and open >= 0 then
    local by_counter = open - redis.call('ZCOUNT', sched, '(' .. now, '+inf') - held
    return math.min(by_queue, math.max(by_counter, 0))
  end
  return by_queue
end

-- The state of a job, or nil; and whether it is terminal.
local function is_terminal(st)
  if not st then return false end
  local k = string.sub(st, 1, 1)
  return k == 'd' or k == 'f' or k == 'o' or k == 'x' or k == 'e'
end
