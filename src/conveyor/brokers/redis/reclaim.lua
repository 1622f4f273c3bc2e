-- reclaim: make tasks whose lease expired before now pending again, or dead when their
-- attempts are spent; each gets a WorkerLost error for the lost attempt.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:running   KEYS[3] <base>:counts   KEYS[4] <base>:dead
-- ARGV[1] now
-- Returns {'requeued' | 'dead', id, ...}. Wakes the queue's waiters when it requeued a task or
-- freed a concurrency slot of its limits.
-- A corrupt record (see unpack_record) whose lease ran out is buried (bury_corrupt); its level
-- is read from its first bytes, or else the running counts are recounted from the index. The
-- slots of its limits are freed when its first bytes reach the held keys (else they stay held).

local now = clock(ARGV[1])
local out = {}
local requeued, freed = false, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. fmt(now))) do
  local r, why, raw = load(KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  if r == false then
    local level = corrupt_level(raw)
    bury_corrupt(KEYS[1], KEYS[4], id, raw, why, level, nil, now)
    if level then
      bump(KEYS[3], 'r' .. level, -1)
    else
      recount(KEYS[1], KEYS[3], 'r', redis.call('ZRANGE', KEYS[2], 0, -1))
    end
    bump(KEYS[3], 'd' .. (level or 0), 1)
    local s = salvage(raw)
    if type(s[R_HELD]) == 'table' then limits_lib().free_held(s, freed) end
    out[#out + 1] = 'dead'
    out[#out + 1] = id
  elseif r and r[R_STATE] == 'r' then
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
