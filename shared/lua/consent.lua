-- consent.lua: a change of a tenant's consent that did not come in a reply (producer/src/ops/consent.rs): an
-- opt-out from another channel (a call to the office, the API, a suppression list imported), an opt-in on record
-- (the lease signed, the portal box ticked), or a person's decision on a suspected revocation. One atomic step per
-- call, with the tenant's consent record and the customer's events, so the record and the state never disagree.
--
-- KEYS[1] cfg HASH   KEYS[2] optouts SET   KEYS[3] consent records HASH   KEYS[4] reviews HASH   KEYS[5] scheduled ZSET
-- KEYS[6] consent SET (opt-ins on record)   KEYS[7] events STREAM
-- ARGV[1] op   ARGV[2] prefix of the held-jobs sets   then per op:
--   'opt_out'  ARGV[3] tenant  ARGV[4] via (api | dashboard | cli)  ARGV[5] source  ARGV[6] note  ARGV[7] at ms ('' now)
--   'import'   ARGV[3] source  then one (tenant, note, at ms) triple per row: idempotent, a tenant already opted
--              out is left as it is (a re-import changes nothing)
--   'opt_in'   ARGV[3] tenant  ARGV[4] via  ARGV[5] source  ARGV[6] evidence  ARGV[7] at ms
--              (an opt-in after an opt-out needs evidence: without it, {'opted_out'} and nothing changes)
--   'dismiss' | 'confirm'  ARGV[3] tenant  ARGV[4] note  ARGV[5] who decided
-- Returns
--   opt_out: {'ok', changed 1|0, held jobs released}      import: {'ok', opted out now, already opted out}
--   opt_in: {'ok', changed 1|0} | {'opted_out'}           dismiss / confirm: {'ok', held jobs released} | {'no_review'}

local cfg, optouts, records, reviews, sched, consent = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local op, held_prefix = ARGV[1], ARGV[2]
local now = now_ms()
if redis.call('HGET', cfg, 'events') == '1' then EV = { key = KEYS[7], batch = '' } end

local function at(v)
  local n = tonumber(v)
  if n and n > 0 then return n end
  return now
end

-- Opts `tenant` out; 1 if that changed their state. Any review of theirs ends (its held jobs come due and end
-- opted out).
local function opt_out(tenant, via, source, note, at_ms, released)
  local changed = redis.call('SADD', optouts, tenant)
  record_opt(records, tenant, 'opt_out', '', '', at_ms, '', { via = via, source = source, note = note, recorded_ms = now })
  if end_review(reviews, cfg, tenant) == 1 then released = released + release_held(held_prefix .. tenant, sched, now) end
  if changed == 1 then emit('recipient.opted_out', 'r', tenant, 'via', via, 'source', source) end
  return changed, released
end

if op == 'opt_out' then
  local changed, released = opt_out(ARGV[3], ARGV[4], ARGV[5], ARGV[6], at(ARGV[7]), 0)
  return {'ok', changed, released}
elseif op == 'import' then
  local source, added, already = ARGV[3], 0, 0
  for i = 4, #ARGV, 3 do
    local tenant = ARGV[i]
    if redis.call('SISMEMBER', optouts, tenant) == 1 then
      already = already + 1
    else
      opt_out(tenant, 'import', source, ARGV[i + 1], at(ARGV[i + 2]), 0)
      added = added + 1
    end
  end
  return {'ok', added, already}
elseif op == 'opt_in' then
  local tenant, via, source, evidence = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local opted_out = redis.call('SISMEMBER', optouts, tenant) == 1
  if opted_out and evidence == '' then return {'opted_out'} end
  local changed = redis.call('SADD', consent, tenant)
  if opted_out then
    redis.call('SREM', optouts, tenant)
    changed = 1
  end
  record_opt(records, tenant, 'opt_in', '', '', at(ARGV[7]), '',
    { via = via, source = source, evidence = evidence, recorded_ms = now })
  if opted_out then emit('recipient.opted_in', 'r', tenant, 'via', via, 'source', source) end
  return {'ok', changed}
elseif op == 'dismiss' or op == 'confirm' then
  local tenant, note, by = ARGV[3], ARGV[4], ARGV[5]
  if redis.call('HEXISTS', reviews, tenant) == 0 then
    -- The same decision sent again (its first answer was lost): done already.
    local stored = redis.call('HGET', records, tenant)
    local history = stored and cjson.decode(stored) or {}
    local last = history[#history]
    if last and last.via == 'review' and ((op == 'confirm' and last.kind == 'opt_out') or (op == 'dismiss' and last.kind == 'review_dismissed')) then
      return {'ok', 0}
    end
    return {'no_review'}
  end
  local stored = cjson.decode(redis.call('HGET', reviews, tenant))
  if op == 'confirm' then
    -- Recorded as the revocation it was, at the time the tenant sent it.
    local changed = redis.call('SADD', optouts, tenant)
    record_opt(records, tenant, 'opt_out', stored.words or '', stored.number or '', tonumber(stored.at_ms) or now,
      stored.sid or '', { via = 'review', note = note, decided_by = by, recorded_ms = now })
    if changed == 1 then emit('recipient.opted_out', 'r', tenant, 'via', 'review', 'words', stored.words or '') end
  else
    record_opt(records, tenant, 'review_dismissed', stored.words or '', stored.number or '', now, stored.sid or '',
      { via = 'review', note = note, decided_by = by })
    emit('recipient.revocation_dismissed', 'r', tenant, 'note', note)
  end
  end_review(reviews, cfg, tenant)
  return {'ok', release_held(held_prefix .. tenant, sched, now)}
end
return redis.error_reply('consent.lua: unknown op ' .. tostring(op))
