-- spend_release.lua: the customer's monthly spend limit changed; the jobs it parked come due now (docs/DESIGN.md,
-- "Spend limit"). Each goes back through reserve.lua, which sends it under the new limit or parks it again. A job
-- that already left the schedule (sent, cancelled, fetched) is not touched (ZADD XX).
--
-- KEYS[1] spendwait SET (job members)   KEYS[2] sched ZSET
-- Returns how many jobs were listed (common.lua, release_held).

return release_held(KEYS[1], KEYS[2], now_ms())
