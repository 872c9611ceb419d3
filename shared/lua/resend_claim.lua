-- resend_claim.lua: claims a batch's failed and/or undelivered recipients for one resend, so nobody is texted twice;
-- or gives a claim back when the resend it was made for created nothing.
--
-- A resend names the states it texts (`failed`, `undelivered`). Each state of a batch may be resent once: the claim is
-- the field `resent:<state>` of the batch record, holding the resend's idempotency key. The same request again (same
-- key) passes and finds the batch its first call made; a different request for a state already claimed is refused
-- and told which key holds it. All of the states are claimed together or none is.
--
-- 'release' removes the fields that still hold this key: the caller's resend was refused before any job was queued
-- (its key belongs to another request), so the states are free again.
--
-- The claim lives in the batch record, so it expires with it (after the batch's retention).
--
-- KEYS[1] the batch HASH   ARGV[1] 'claim' | 'release'   ARGV[2] the resend's idempotency key   ARGV[3..] the states
-- Returns {'claimed', new 0|1} | {'taken', state, the key holding it} | {'released', n} | {'orphan'} (no such batch)

local batch, mode, token = KEYS[1], ARGV[1], ARGV[2]
if redis.call('EXISTS', batch) == 0 then return {'orphan'} end
if mode == 'release' then
  local n = 0
  for i = 3, #ARGV do
    if redis.call('HGET', batch, 'resent:' .. ARGV[i]) == token then
      n = n + redis.call('HDEL', batch, 'resent:' .. ARGV[i])
    end
  end
  return {'released', n}
end
local new = 0
for i = 3, #ARGV do
  local held = redis.call('HGET', batch, 'resent:' .. ARGV[i])
  if held and held ~= token then return {'taken', ARGV[i], held} end
  if not held then new = 1 end
end
for i = 3, #ARGV do redis.call('HSET', batch, 'resent:' .. ARGV[i], token) end
return {'claimed', new}
