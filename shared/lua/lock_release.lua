-- lock_release.lua: compare-and-delete, so a holder whose lock expired never deletes its successor's lock.
--
-- KEYS[1] lock STRING   ARGV[1] token
-- Returns 1 if released, 0 if the lock was not ours.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
