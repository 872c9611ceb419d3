-- purchase_commit.lua: adds a bought (or adopted) number to the pool and clears its purchase intent, atomically,
-- so no reader ever sees the number missing *and* the intent gone (which would look like room to buy again).
-- Idempotent: committing the same number twice changes nothing.
--
-- KEYS[1] pool ZSET   KEYS[2] pool meta HASH   KEYS[3] intents HASH
-- ARGV[1] number      ARGV[2] number sid (PN...)   ARGV[3] intent id ('' when adopting an untracked number)
-- Returns 1 if the number is new to the pool, 0 if it was already there.

local pool, meta, intents = KEYS[1], KEYS[2], KEYS[3]
local number, sid, intent = ARGV[1], ARGV[2], ARGV[3]
local added = redis.call('ZADD', pool, 'NX', now_ms(), number)
redis.call('HSET', meta, number, sid .. '|' .. intent)
if intent ~= '' then
  redis.call('HDEL', intents, intent)
end
return added
