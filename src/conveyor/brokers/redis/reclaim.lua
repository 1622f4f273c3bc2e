-- reclaim: make tasks whose lease expired before now pending again, or dead when their
-- attempts are spent; each gets a WorkerLost error for the lost attempt.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:running   KEYS[3] <base>:counts   KEYS[4] <base>:dead
-- ARGV[1] now
-- Returns {'requeued' | 'dead', id, ...}. Wakes the queue's waiters when it requeued a task or
-- freed a concurrency slot of its limits.

local now = clock(ARGV[1])
local out = {}
local requeued, freed = false, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. fmt(now))) do
  local r = load(KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  if r and r[R_STATE] == 'r' then
    local level = r[R_PRIO]
    local worker = r[R_WORKER] and cjson.encode(r[R_WORKER]) or 'null'
    local message = 'worker lost: lease expired while running on ' .. (r[R_WORKER] or 'None')
    r[R_ERRORS] = append_error(r[R_ERRORS], '{"attempt":' .. r[R_ATTEMPT] .. ',"type":"WorkerLost","message":'
      .. cjson.encode(message) .. ',"traceback":null,"worker":' .. worker .. ',"at":' .. fmt(now) .. '}')
    r[R_LEASE] = false
    if r[R_HELD] then limits_lib().free_held(r, freed) end
    bump(KEYS[3], 'r' .. level, -1)
    if r[R_ATTEMPT] >= r[R_MAX] then
      r[R_STATE] = 'd'
      r[R_FINISHED] = now
      redis.call('ZADD', KEYS[4], fmt(now), id)
      bump(KEYS[3], 'd' .. level, 1)
      out[#out + 1] = 'dead'
    else
      r[R_STATE] = 'p'
      to_pending(KEYS[1], id, r)
      bump(KEYS[3], 'p' .. level, 1)
      out[#out + 1] = 'requeued'
      requeued = true
    end
    out[#out + 1] = id
    save(KEYS[1], id, r)
  end
end
local woken = next(freed) and limits_lib().free_slots(KEYS[1], freed)
if requeued or woken then wake(KEYS[1]) end
return out
