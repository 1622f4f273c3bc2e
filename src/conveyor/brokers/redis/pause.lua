-- pause: store a pause of this queue, or of one task in it; reserve reads it in its own script,
-- so no reservation after this one claims a job it covers.
--
-- KEYS[1] <base>:paused
-- ARGV[1] task ('' for the whole queue)   ARGV[2] now ('' = the store's clock)
-- Returns 1 if stored now, 0 if it was paused already (the first pause's time is kept).

return redis.call('HSETNX', KEYS[1], ARGV[1], fmt(clock(ARGV[2])))
