-- hash_swap.lua: compare-and-set of hash fields, so a value re-written in a new form (a secret sealed under the
-- current key) never overwrites a change made since it was read.
--
-- KEYS[1] hash   ARGV: field1, expected1, new1, field2, expected2, new2, …
-- Each field is set to its new value only if it still holds the expected one. Returns how many were set.

local set = 0
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    set = set + 1
  end
end
return set
