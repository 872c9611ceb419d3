-- record_inbound.lua: a message a tenant sent to one of the customer's numbers, in one atomic step.
--
-- 1. Credits it: +1 to that number's limit for one window, up to the conversational cap (the cap is applied when
--    capacity is computed). Only for a number in the pool; a webhook about a number in no pool (attributed by the
--    subaccount that signed it) is recorded below all the same.
-- 2. With the reply's details (ARGV[4..]): a revocation — one of Twilio's keywords ('stop'), or the tenant's own
--    words read as one ('revoke', domain/revocation.rs) — adds the tenant to the customer's opt-out set (every
--    number of the customer, bought now or later, stops texting them, and queued jobs end opted out), and ends a
--    review of theirs; an opt-in keyword ('start') removes them and puts an opt-in on record (consent); a suspected
--    revocation ('suspect') opens a review (common.lua, "Consent reviews") unless one is open or they opted out.
--    Each is kept in the tenant's consent record (words, how they were read, number, time) whether or not it
--    changed anything. Ending a review releases the tenant's held jobs.
-- 3. When the customer records events (cfg `events`): `message.received` (from, to, body, sid, and the batch it most
--    likely answers: the tenant's last text, from the sticky-sender entry, when it came from this number), then
--    `recipient.opted_out` (with `via`: keyword or words) / `recipient.opted_in` when the tenant's state changed,
--    `recipient.revocation_suspected` when a review opened.
-- 4. The tenant's sticky sender (reserve.lua) becomes the number they wrote to, when it is in the pool: the app's
--    answer (`POST …/messages`) goes out from the number the tenant is talking to. The reply is appended to the
--    tenant's conversation (KEYS[7], common.lua), for every customer.
-- 5. The support desk's inbox: the tenant's thread moves to the top of the customer's inbox (KEYS[11], tenant → ms of
--    their last reply) with one more unread reply (KEYS[12]), and into the replies of the batch it answers
--    (`{c:ID}:b:<id>:replies`, tenant → ms), each kept as long as a conversation. The inbox holds the newest
--    INBOX_MAX threads; older ones (and threads quiet for longer than a conversation lives) leave it a few at a
--    time, with their unread counts.
-- Idempotent per message sid (Twilio retries webhooks): a repeat changes nothing and reports nothing.
--
-- KEYS[1] received window ZSET of the number   KEYS[2] pool ZSET
-- KEYS[3] customer cfg HASH   KEYS[4] optouts SET   KEYS[5] opt-out records HASH   KEYS[6] events STREAM
-- KEYS[7] the tenant's conversation STRING of this epoch   KEYS[8] reviews HASH   KEYS[9] scheduled ZSET
-- KEYS[10] consent SET
-- KEYS[11] inbox ZSET   KEYS[12] unread HASH
-- ARGV[1] message sid   ARGV[2] window ms   ARGV[3] number (To)
-- ARGV[4] the tenant (From, E.164), or '' to credit only   ARGV[5] body
-- ARGV[6] 'stop' | 'revoke' | 'suspect' | 'start' | 'help' | ''
-- ARGV[7] the keyword or words as the tenant wrote them   ARGV[8] sticky-sender key prefix (reserve.lua)
-- ARGV[9] the rule that read the reply ('revoke', 'suspect')   ARGV[10] a review's deadline, ms ('suspect')
-- ARGV[11] prefix of the held-jobs sets (`{c:ID}:held:`)
-- Returns {'ok', received_in_window, change, help} | {'duplicate', received_in_window, '', help}
--   | {'unknown_number'} (credit only: nothing recorded)
-- change: 'out' | 'in' (the tenant's opt-out state moved) | 'suspected' (a review opened) | '';
-- help: the customer's help text for 'help', or ''

local rk, pool, cfg, optouts, records = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local sid, window_ms, number = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local tenant, body, action, keyword, sprefix = ARGV[4] or '', ARGV[5] or '', ARGV[6] or '', ARGV[7] or '', ARGV[8] or ''
local rule, deadline, held_prefix = ARGV[9] or '', ARGV[10] or '', ARGV[11] or ''
local in_pool = redis.call('ZSCORE', pool, number)
if not in_pool and tenant == '' then
  return {'unknown_number'}
end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - window_ms)
local added = redis.call('ZADD', rk, 'NX', now, sid)
redis.call('PEXPIRE', rk, window_ms + 1000)
local n = redis.call('ZCARD', rk)
if not in_pool then
  -- Not credited: the number is in no pool. The entry only marks the sid as seen.
  n = 0
end
local help = ''
if action == 'help' then help = redis.call('HGET', cfg, 'help_text') or '' end
if added == 0 then
  -- A delivery Twilio retries (our answer to the first was lost, or was 503): the tenant's revocation, recorded by the
  -- first, is reported again, so its confirmation still goes back once.
  local again = ''
  if action == 'revoke' and tenant ~= '' and records then
    local stored = redis.call('HGET', records, tenant)
    local history = stored and cjson.decode(stored) or {}
    local last = history[#history]
    if last and last.sid == sid and last.kind == 'opt_out' then again = 'out' end
  end
  return {'duplicate', n, again, help}
end
if tenant == '' then
  return {'ok', n, '', help}
end

if redis.call('HGET', cfg, 'events') == '1' then EV = { key = KEYS[6], batch = '' } end
-- The tenant's last text (reserve.lua: `<number>` or `<number>|<batch id>` in the sticky-sender hashes of this epoch
-- and the last): the batch the reply most likely answers, when it came from the number the reply went to.
local epoch = math.floor(now / window_ms)
local bucket, field = string.sub(tenant, -3), string.sub(tenant, 1, -4)
local sticky_cur = sprefix .. epoch .. ':' .. bucket
local last = redis.call('HGET', sticky_cur, field)
  or redis.call('HGET', sprefix .. (epoch - 1) .. ':' .. bucket, field) or ''
local from_number, batch = string.match(last, '^([^|]*)|(.*)$')
if from_number ~= number then batch = '' end
batch = batch or ''
local conv = KEYS[7]
if batch == '' and conv then
  -- Without events the sticky entry names no batch: the tenant's last text from this number in their thread does.
  local recent = conv_entries(redis.call('GET', conv) or '')
  for i = #recent, math.max(1, #recent - CONV_SCAN + 1), -1 do
    local dir, _, num, _, b = string.match(recent[i], '^(%a)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|')
    if dir == 'o' and num == number and b ~= '' then batch = b break end
  end
end
if in_pool and sprefix ~= '' then
  if EV then redis.call('HSET', sticky_cur, field, number .. '|' .. batch)
  else redis.call('HSET', sticky_cur, field, number) end
  redis.call('PEXPIRE', sticky_cur, 2 * window_ms + 1000)
end
emit('message.received', 'b', batch, 'r', tenant, 'to', number, 'sid', sid, 'body', body)
if conv then
  converse(conv, 'i', now, number, body, sid, batch)
  -- The HELP answer goes back in the webhook's reply (TwiML): the thread shows it too.
  if help ~= '' then converse(conv, 'o', now, number, help, '', '') end
end
local inbox, unread = KEYS[11], KEYS[12]
if inbox then
  redis.call('ZADD', inbox, now, tenant)
  redis.call('HINCRBY', unread, tenant, 1)
  -- Threads leave the inbox when it is full or when their conversation has expired, a few per reply (bounded work).
  local gone = redis.call('ZRANGEBYSCORE', inbox, '-inf', now - CONV_TTL_MS, 'LIMIT', 0, 20)
  local over = redis.call('ZCARD', inbox) - INBOX_MAX
  if over > 0 then
    for _, t in ipairs(redis.call('ZRANGE', inbox, 0, math.min(over, 20) - 1)) do gone[#gone + 1] = t end
  end
  if #gone > 0 then
    redis.call('ZREM', inbox, unpack(gone))
    redis.call('HDEL', unread, unpack(gone))
  end
  local blocal = string.match(batch, '%.([%w]+)$')
  if blocal then
    local replies = customer_key(cfg, 'b:' .. blocal .. ':replies')
    redis.call('ZADD', replies, now, tenant)
    redis.call('PEXPIRE', replies, CONV_TTL_MS)
  end
end

local change = ''
local reviews, sched, consent = KEYS[8], KEYS[9], KEYS[10]
-- Ends the tenant's review, if one is open, and makes its held jobs due now.
local function close_review()
  if reviews and end_review(reviews, cfg, tenant) == 1 then release_held(held_prefix .. tenant, sched, now) end
end
if action == 'stop' or action == 'revoke' then
  local via = (action == 'stop') and 'keyword' or 'words'
  if redis.call('SADD', optouts, tenant) == 1 then change = 'out' end
  record_opt(records, tenant, 'opt_out', keyword, number, now, sid, { via = via, rule = rule })
  close_review()
  if change == 'out' then
    emit('recipient.opted_out', 'r', tenant, 'keyword', keyword, 'number', number, 'via', via, 'rule', rule)
  end
elseif action == 'start' then
  if redis.call('SREM', optouts, tenant) == 1 then change = 'in' end
  -- The tenant's own START is consent on record.
  if consent then redis.call('SADD', consent, tenant) end
  record_opt(records, tenant, 'opt_in', keyword, number, now, sid, { via = 'keyword' })
  close_review()
  if change == 'in' then
    emit('recipient.opted_in', 'r', tenant, 'keyword', keyword, 'number', number, 'via', 'keyword')
  end
elseif action == 'suspect' and reviews then
  if redis.call('SISMEMBER', optouts, tenant) == 0 and redis.call('HEXISTS', reviews, tenant) == 0 then
    redis.call('HSET', reviews, tenant, cjson.encode({ at_ms = now, deadline_ms = tonumber(deadline) or 0,
      words = keyword, rule = rule, number = number, sid = sid }))
    redis.call('HINCRBY', cfg, 'review_n', 1)
    record_opt(records, tenant, 'suspected', keyword, number, now, sid, { via = 'words', rule = rule })
    emit('recipient.revocation_suspected', 'r', tenant, 'number', number, 'words', keyword, 'rule', rule,
      'deadline_ms', deadline)
    change = 'suspected'
  elseif redis.call('SISMEMBER', optouts, tenant) == 0 then
    -- Another reply that may revoke, while its review waits: kept in the record for the person who decides.
    record_opt(records, tenant, 'suspected', keyword, number, now, sid, { via = 'words', rule = rule })
  end
end
return {'ok', n, change, help}
