-- release_plan.lua: picks the numbers of a customer to release because they have gone idle, and (in 'apply' mode,
-- under the purchase lock) takes them out of the pool and records a release intent for each — the mirror of a
-- purchase intent: the number leaves the pool first, in this script, so nothing can reserve a slot on it once
-- Twilio's DELETE may be under way; the intent stays until Twilio confirms the number is gone, and an unknown
-- outcome is resolved against Twilio (release.rs), never guessed.
--
-- A number may be released when all of these hold:
--   * it sent nothing for `idle_ms` (last send from the pool's `last` hash, else its purchase time);
--   * it sent nothing for two windows either: a recipient's sticky sender is remembered for up to two windows, so
--     before that a recipient could still be steered to it (and replies would land on a number we gave up);
--   * it holds no unsettled reservation (a send whose outcome is not known yet);
--   * the numbers kept still cover the backlog (common.lua, backlog_now) with their free slots: the oldest
--     numbers are kept first (they have the longest history with carriers), the newest released first;
--   * it is not the last number of a customer with a Messaging Service: a 10DLC campaign left without a number for
--     60 days costs a T-Mobile fee (and the campaign's registration is kept alive by a number that can send).
-- 'dry' mode writes nothing at all (window counts are read, not trimmed), so a dry run leaves Redis as it was.
--
-- KEYS[1] cfg HASH   KEYS[2] pool ZSET   KEYS[3] pool meta HASH   KEYS[4] pool last-send HASH   KEYS[5] unsent ZSET
-- KEYS[6] intents HASH   KEYS[7] purchase lock STRING   KEYS[8] releases HASH   KEYS[9] queue LIST
-- KEYS[10] scheduled ZSET   KEYS[11] inflight ZSET
-- ARGV[1] 'dry' | 'apply'   ARGV[2] lock token ('apply')   ARGV[3] idle ms   ARGV[4] window ms   ARGV[5] daily quota
-- ARGV[6] conversational cap   ARGV[7] window key prefix   ARGV[8] received key prefix
-- Returns {'lost_lock'} | {'busy'} (purchases in flight) |
--         {'plan', now, backlog, numbers kept, (number, sid, last send ms or -1, idle ms)...}

local cfg, pool, meta, last, unsent, intents, lock, releases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6],
  KEYS[7], KEYS[8]
local mode, token, idle_ms, window_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local quota, cap, wprefix, rprefix = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local now = now_ms()

if mode == 'apply' then
  if redis.call('GET', lock) ~= token then return {'lost_lock'} end
end
if redis.call('HLEN', intents) > 0 then return {'busy'} end

local backlog = backlog_now(cfg, KEYS[9], KEYS[10], KEYS[11], unsent, now)
local horizon = now - window_ms - window_slack(window_ms)

local held = {}
for _, m in ipairs(redis.call('ZRANGE', unsent, 0, -1)) do
  held[string.match(m, '^(.*)|[^|]*$') or m] = true
end

-- Free slots of one number now, without trimming its window.
local function free(number)
  local sent = 0
  for _, e in ipairs(redis.call('LRANGE', wprefix .. number, 0, -1)) do
    if entry_time(e) > horizon then sent = sent + 1 end
  end
  local limit = math.min(quota + redis.call('ZCOUNT', rprefix .. number, '(' .. horizon, '+inf'), cap)
  return math.max(limit - sent, 0)
end

local owned = redis.call('ZRANGE', pool, 0, -1, 'WITHSCORES')
local kept_capacity, kept = 0, 0
local candidates = {}
for i = 1, #owned, 2 do
  local number, bought = owned[i], tonumber(owned[i + 1])
  local sent_at = tonumber(redis.call('HGET', last, number))
  local idle = now - (sent_at or bought)
  if idle >= idle_ms and (not sent_at or idle >= 2 * window_ms) and not held[number] then
    candidates[#candidates + 1] = {number, sent_at or -1, idle}
  else
    kept = kept + 1
    kept_capacity = kept_capacity + free(number)
  end
end

-- Candidates come oldest first (the pool is ordered by purchase time): keep from the front while the backlog needs
-- slots, release the rest.
local out = {'plan', now, backlog, 0}
local service = redis.call('HGET', cfg, 'messaging_service')
local keep_one = service ~= false and service ~= ''
for _, c in ipairs(candidates) do
  local number = c[1]
  if kept_capacity < backlog or (keep_one and kept == 0) then
    kept = kept + 1
    kept_capacity = kept_capacity + free(number)
  else
    local sid = string.match(redis.call('HGET', meta, number) or '', '^([^|]*)') or ''
    if mode == 'apply' then
      redis.call('ZREM', pool, number)
      redis.call('HDEL', meta, number)
      redis.call('HDEL', last, number)
      redis.call('HSET', releases, number, now .. '|' .. sid)
      if redis.call('HGET', cfg, 'current') == number then redis.call('HDEL', cfg, 'current') end
    end
    out[#out + 1] = number
    out[#out + 1] = sid
    out[#out + 1] = c[2]
    out[#out + 1] = c[3]
  end
end
out[4] = kept
return out
