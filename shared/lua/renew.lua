-- renew.lua: extends the leases of the jobs one worker process is running for one customer (its heartbeat).
--
-- Never re-adds a job that is no longer in flight under the worker's own token: if a lease already expired and the
-- job went back to the queue (or to another worker, under another token), the worker is told, so it does not send
-- a text another worker may now be sending.
--
-- KEYS[1] inflight ZSET
-- ARGV[1] lease ms   ARGV[2..] in-flight members (`<job>#<token>`)
-- Returns the members that are no longer in flight.

local inflight = KEYS[1]
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZADD', inflight, 'XX', 'CH', deadline, ARGV[i]) == 0 then
    if not redis.call('ZSCORE', inflight, ARGV[i]) then
      lost[#lost + 1] = ARGV[i]
    end
  end
end
return lost
