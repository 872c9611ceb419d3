-- record_inbound.lua: a message a tenant sent to one of the customer's numbers, in one atomic step.
--
-- 1. Credits it: +1 to that number's limit for one window, up to the conversational cap (the cap is applied when
--    capacity is computed). Only for a number in the pool; a webhook about a number in no pool (attributed by the
--    subaccount that signed it) is recorded below all the same.
-- 2. With the reply's details (ARGV[4..]): an opt-out keyword adds the tenant to the customer's opt-out set (every
--    number of the customer, bought now or later, stops texting them), an opt-in keyword removes them; either is
--    kept in the tenant's opt-out record (keyword, number, time: the last 20) whether or not it changed anything.
-- 3. When the customer records events (cfg `events`): `message.received` (from, to, body, sid, and the batch it most
--    likely answers: the tenant's last text, from the sticky-sender entry, when it came from this number), then
--    `recipient.opted_out` / `recipient.opted_in` when the keyword changed the tenant's state.
-- 4. The tenant's sticky sender (reserve.lua) becomes the number they wrote to, when it is in the pool: the app's
--    answer (`POST …/messages`) goes out from the number the tenant is talking to. With events, the reply is also
--    appended to the tenant's conversation (KEYS[7], common.lua).
-- Idempotent per message sid (Twilio retries webhooks): a repeat changes nothing and reports nothing.
--
-- KEYS[1] received window ZSET of the number   KEYS[2] pool ZSET
-- KEYS[3] customer cfg HASH   KEYS[4] optouts SET   KEYS[5] opt-out records HASH   KEYS[6] events STREAM
-- KEYS[7] the tenant's conversation LIST
-- ARGV[1] message sid   ARGV[2] window ms   ARGV[3] number (To)
-- ARGV[4] the tenant (From, E.164), or '' to credit only   ARGV[5] body   ARGV[6] 'stop' | 'start' | 'help' | ''
-- ARGV[7] the keyword as the tenant wrote it   ARGV[8] sticky-sender key prefix (reserve.lua)
-- Returns {'ok', received_in_window, change, help} | {'duplicate', received_in_window, '', help}
--   | {'unknown_number'} (credit only: nothing recorded)
-- change: 'out' | 'in' | '' (the tenant's opt-out state moved); help: the customer's help text for 'help', or ''

local rk, pool, cfg, optouts, records = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local sid, window_ms, number = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local tenant, body, action, keyword, sprefix = ARGV[4] or '', ARGV[5] or '', ARGV[6] or '', ARGV[7] or '', ARGV[8] or ''
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
  return {'duplicate', n, '', help}
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
if in_pool and sprefix ~= '' then
  if EV then redis.call('HSET', sticky_cur, field, number .. '|' .. batch)
  else redis.call('HSET', sticky_cur, field, number) end
  redis.call('PEXPIRE', sticky_cur, 2 * window_ms + 1000)
end
if EV then
  emit('message.received', 'b', batch, 'r', tenant, 'to', number, 'sid', sid, 'body', body)
  if KEYS[7] then
    converse(KEYS[7], 'i', now, number, body, sid, batch)
    -- The HELP answer goes back in the webhook's reply (TwiML): the thread shows it too.
    if help ~= '' then converse(KEYS[7], 'o', now, number, help, '', '') end
  end
end

local change = ''
if action == 'stop' or action == 'start' then
  if action == 'stop' then
    if redis.call('SADD', optouts, tenant) == 1 then change = 'out' end
  elseif redis.call('SREM', optouts, tenant) == 1 then
    change = 'in'
  end
  record_opt(records, tenant, (action == 'stop') and 'opt_out' or 'opt_in', keyword, number, now, sid)
  if change == 'out' then
    emit('recipient.opted_out', 'r', tenant, 'keyword', keyword, 'number', number)
  elseif change == 'in' then
    emit('recipient.opted_in', 'r', tenant, 'keyword', keyword, 'number', number)
  end
end
return {'ok', n, change, help}
