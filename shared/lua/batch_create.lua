-- batch_create.lua: creates a batch record, or finds the batch an idempotency key already made.
--
-- The idempotency key and the record are written in one step, so two producers racing with the same key end up
-- with one batch. The caller compares the stored fingerprint (a hash of customer, body and recipients) with its
-- own: same request → resume or report that batch; different request → reject the reused key.
--
-- A batch of a customer that records events (cfg `events`) records them too (`ev`), for its whole life: a change of
-- the setting applies to batches made after it. The record keeps its own id (`id`) for its events.
--
-- A new batch is also added to the customer's batch index (newest first for the dashboard), and index entries
-- older than the retention (their records have expired) are trimmed on the way.
--
-- KEYS[1] customer cfg HASH   KEYS[2] idempotency STRING   KEYS[3] batch HASH   KEYS[4] customer's batch index ZSET
-- ARGV[1] batch id (full)     ARGV[2] key ttl s            ARGV[3..] field, value pairs of the new record
-- Returns {'created', created ms} | {'exists', batch id} | {'no_customer'}

local cfg, idem, batch = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', cfg) == 0 then
  return {'no_customer'}
end
local existing = redis.call('GET', idem)
if existing then
  return {'exists', existing}
end
redis.call('SET', idem, ARGV[1], 'EX', tonumber(ARGV[2]))
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', batch, unpack(fields))
local now = now_ms()
redis.call('HSET', batch, 'created_ms', now, 'enqueued', 0, 'state', 'enqueuing', 'id', ARGV[1])
if redis.call('HGET', cfg, 'events') == '1' then redis.call('HSET', batch, 'ev', '1') end
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[2]) * 1000)
return {'created', tostring(now)}
