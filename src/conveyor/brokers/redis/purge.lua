-- purge: delete dead jobs of this queue.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:keys   KEYS[3] <base>:counts   KEYS[4] <base>:dead
-- ARGV[1] '1' for every dead job, '0' for the ids that follow   ARGV[2..] job ids
-- Returns how many were deleted (ids of jobs that are not dead are skipped). A corrupt record
-- (see unpack_record) is deleted when it is in the dead index; the dead count of its level
-- drops when its first bytes tell the level, and its key is freed when they tell the key.

local ids = ARGV[1] == '1' and redis.call('ZRANGE', KEYS[4], 0, -1) or {unpack(ARGV, 2)}
local n = 0
for _, id in ipairs(ids) do
  local r, _, raw = load(KEYS[1], id)
  if r == false and redis.call('ZSCORE', KEYS[4], id) then
    local s = salvage(raw)
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[4], id)
    if type(s[R_KEY]) == 'string' then free_key(KEYS[2], id, s) end
    if whole(s[R_PRIO], MAX_LEVEL) then bump(KEYS[3], 'd' .. s[R_PRIO], -1) end
    n = n + 1
  elseif r and r[R_STATE] == 'd' then
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[4], id)
    free_key(KEYS[2], id, r)
    bump(KEYS[3], 'd' .. r[R_PRIO], -1)
    n = n + 1
  end
end
return n
