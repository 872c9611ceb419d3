-- intent_abandon.lua: drops a purchase intent that is known not to have bought anything (Twilio answered with a
-- definite error, or the reconciler found no number tagged with it long after the purchase could have finished).
--
-- KEYS[1] intents HASH
-- ARGV[1] intent id   ARGV[2] the intent's value as the caller read it (compare-and-delete), or '*' when the
--                     caller created the intent and knows it never sent a purchase request for it, or '*prefix'
--                     to drop every intent whose id starts with ARGV[1] (a decision whose reply was lost: its
--                     caller never started any of its purchases)
-- Returns the number of intents dropped.

if ARGV[2] == '*prefix' then
  local dropped = 0
  local ids = redis.call('HKEYS', KEYS[1])
  for i = 1, #ids do
    if string.sub(ids[i], 1, #ARGV[1]) == ARGV[1] then
      dropped = dropped + redis.call('HDEL', KEYS[1], ids[i])
    end
  end
  return dropped
end
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and (ARGV[2] == '*' or v == ARGV[2]) then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
