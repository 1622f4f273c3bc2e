-- beat: record a worker's heartbeat in the worker registry.
--
-- KEYS[1] <prefix>:workers   hash  worker id -> "<expiry> <WorkerInfo JSON>"
-- ARGV[1] now ('' = the store's clock)   ARGV[2] worker id   ARGV[3] ttl   ARGV[4] WorkerInfo JSON
-- The entry is listed until ttl seconds from the store's clock: the worker's own clock, in its
-- info, decides nothing. Returns the expiry.

local now = clock(ARGV[1])
local expires = fmt(now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], ARGV[2], expires .. ' ' .. ARGV[4])
return expires
