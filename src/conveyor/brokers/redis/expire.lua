-- expire: delete finished (succeeded, cancelled) jobs whose retention ended, with their keys.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:keys   KEYS[3] <base>:counts   KEYS[4] <base>:done
-- ARGV[1] now   ARGV[2] at most this many
-- Returns how many were deleted.

local now = clock(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', fmt(now), 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local r = load(KEYS[1], id)
  redis.call('ZREM', KEYS[4], id)
  if r then
    redis.call('HDEL', KEYS[1], id)
    free_key(KEYS[2], id, r)
    bump(KEYS[3], r[R_STATE] .. r[R_PRIO], -1)
  end
end
return #ids
