-- resume: undo a pause; a task's parked jobs go back to their pending zsets, at most ARGV[2] of
-- them per call (the caller calls again while the reply says more are left), and the queue's
-- waiting workers are woken. A job with limits goes back to its group, which becomes claimable
-- from the job's due time on (see to_pending; its row is made anew if the group had emptied).
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:paused
-- ARGV[1] task ('' for the whole queue)   ARGV[2] most parked jobs to put back
-- Returns how many parked jobs are left.

redis.call('HDEL', KEYS[2], ARGV[1])
local left = 0
if ARGV[1] ~= '' then
  local parked = parked_key(KEYS[1], ARGV[1])
  local ids = redis.call('ZRANGE', parked, 0, tonumber(ARGV[2]) - 1)
  if #ids > 0 then
    redis.call('ZREMRANGEBYRANK', parked, 0, #ids - 1)
    local records = load_many(KEYS[1], ids)
    for k, id in ipairs(ids) do
      local r = records[k]
      if r and r[R_STATE] == 'p' then
        to_pending(KEYS[1], id, r)
      end
    end
  end
  left = redis.call('ZCOUNT', parked, '-inf', '+inf')
end
wake(KEYS[1])
return left
