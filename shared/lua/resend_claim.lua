-- resend_claim.lua: claims a batch's failed and/or undelivered recipients for one resend, so nobody is texted twice.
--
-- A resend names the states it texts (`failed`, `undelivered`). Each state of a batch may be resent once: the claim is
-- the field `resent:<state>` of the batch record, holding the resend's idempotency key. The same request again (same
-- key) passes and finds the batch its first call made; a different request for a state already claimed is refused
-- and told which key holds it. All of the states are claimed together or none is.
--
-- The claim lives in the batch record, so it expires with it (after the batch's retention).
--
-- KEYS[1] the batch HASH   ARGV[1] the resend's idempotency key   ARGV[2..] the states
-- Returns {'claimed'} | {'taken', state, the key holding it} | {'orphan'} (no such batch)

local batch, token = KEYS[1], ARGV[1]
if redis.call('EXISTS', batch) == 0 then return {'orphan'} end
for i = 2, #ARGV do
  local held = redis.call('HGET', batch, 'resent:' .. ARGV[i])
  if held and held ~= token then return {'taken', ARGV[i], held} end
end
for i = 2, #ARGV do redis.call('HSET', batch, 'resent:' .. ARGV[i], token) end
return {'claimed'}
