-- cancel: cancel jobs that have not started (pending); running and finished jobs are left alone.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:counts   KEYS[3] <base>:done
-- ARGV[1] now   ARGV[2] retention seconds   ARGV[3..] job ids
-- Returns the ids cancelled.

local now = clock(ARGV[1])
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local r = load(KEYS[1], id)
  if r and r[R_STATE] == 'p' then
    local level = r[R_PRIO]
    if from_pending(KEYS[1], id, r) == 0 then
      redis.call('ZREM', parked_key(KEYS[1], r[R_TASK]), id)  -- set aside while its task is paused
    end
    r[R_STATE] = 'c'
    r[R_FINISHED] = now
    save(KEYS[1], id, r)
    redis.call('ZADD', KEYS[3], fmt(now + tonumber(ARGV[2])), id)
    bump(KEYS[2], 'p' .. level, -1)
    bump(KEYS[2], 'c' .. level, 1)
    redis.call('HDEL', base_of(KEYS[1]) .. ':control', id .. '\31s')  -- its snoozes (ack.lua)
    out[#out + 1] = id
  end
end
return out
