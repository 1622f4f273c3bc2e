-- expire: delete finished (succeeded, cancelled) jobs whose retention ended, with their keys.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:keys   KEYS[3] <base>:counts   KEYS[4] <base>:done
-- ARGV[1] now   ARGV[2] at most this many
-- Returns how many were deleted. A corrupt record (see unpack_record) is deleted too; the count
-- of its state and level drops when its first bytes tell both, its key is freed when they tell it.

local now = clock(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', fmt(now), 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local r, _, raw = load(KEYS[1], id)
  redis.call('ZREM', KEYS[4], id)
  if r == false then
    local s = salvage(raw)
    redis.call('HDEL', KEYS[1], id)
    if type(s[R_KEY]) == 'string' then free_key(KEYS[2], id, s) end
    if (s[R_STATE] == 's' or s[R_STATE] == 'c') and whole(s[R_PRIO], MAX_LEVEL) then
      bump(KEYS[3], s[R_STATE] .. s[R_PRIO], -1)
    end
  elseif r then
    redis.call('HDEL', KEYS[1], id)
    free_key(KEYS[2], id, r)
    bump(KEYS[3], r[R_STATE] .. r[R_PRIO], -1)
  end
end
return #ids
