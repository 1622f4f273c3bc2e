-- release: return leased, unstarted tasks to pending without counting their attempt.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:running   KEYS[3] <base>:counts
-- ARGV[1..] job id, token pairs
-- Returns how many were released (a stale token releases nothing); their limits' slots are freed,
-- their tokens stay spent. Wakes the queue's waiters.

local n, freed = 0, {}
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  local r = load(KEYS[1], id)
  if r and r[R_STATE] == 'r' and r[R_TOKEN] == tonumber(ARGV[i + 1]) then
    local level = r[R_PRIO]
    r[R_STATE] = 'p'
    r[R_ATTEMPT] = r[R_ATTEMPT] - 1
    r[R_LEASE] = false
    r[R_WORKER] = false
    r[R_STARTED] = false
    if r[R_HELD] then limits_lib().free_held(r, freed) end
    save(KEYS[1], id, r)
    redis.call('ZREM', KEYS[2], id)
    to_pending(KEYS[1], id, r)
    bump(KEYS[3], 'r' .. level, -1)
    bump(KEYS[3], 'p' .. level, 1)
    n = n + 1
  end
end
if next(freed) then limits_lib().free_slots(KEYS[1], freed) end
if n > 0 then wake(KEYS[1]) end
return n
