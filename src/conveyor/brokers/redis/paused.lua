-- paused: the pauses of this queue.
--
-- KEYS[1] <base>:paused
-- ARGV none
-- Returns {task, since, ...}, task '' for the whole queue.

return redis.call('HGETALL', KEYS[1])
