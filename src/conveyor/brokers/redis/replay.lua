-- replay: make dead jobs of this queue pending and due now, attempts (and throttles) reset,
-- errors kept; a job with limits returns to its group.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:counts   KEYS[3] <base>:dead
-- ARGV[1] now   ARGV[2] '1' for every dead job, '0' for the ids that follow   ARGV[3..] job ids
-- Returns how many were replayed. Wakes the queue's waiters.

local now = clock(ARGV[1])
local ids = ARGV[2] == '1' and redis.call('ZRANGE', KEYS[3], 0, -1) or {unpack(ARGV, 3)}
local n = 0
for _, id in ipairs(ids) do
  local r = load(KEYS[1], id)
  if r and r[R_STATE] == 'd' then
    local level = r[R_PRIO]
    redis.call('ZREM', KEYS[3], id)
    r[R_STATE] = 'p'
    r[R_ATTEMPT] = 0
    r[R_THROTTLED] = false
    r[R_RUN_AT] = now
    r[R_FINISHED] = false
    r[R_STARTED] = false
    r[R_WORKER] = false
    save(KEYS[1], id, r)
    to_pending(KEYS[1], id, r)
    bump(KEYS[2], 'd' .. level, -1)
    bump(KEYS[2], 'p' .. level, 1)
    n = n + 1
  end
end
if n > 0 then wake(KEYS[1]) end
return n
