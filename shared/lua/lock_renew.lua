-- lock_renew.lua: extends a lock only if it still holds our token (a plain PEXPIRE could extend a lock that
-- expired and now belongs to someone else).
--
-- KEYS[1] lock STRING   ARGV[1] token   ARGV[2] ttl ms
-- Returns 1 if renewed, 0 if the lock is no longer ours.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
