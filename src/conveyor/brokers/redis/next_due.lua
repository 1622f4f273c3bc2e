-- next_due: seconds until the earliest pending task of this queue is due (0 if one is due).
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:counts   KEYS[3] <base>:paused
-- Returns the seconds as a decimal string, or '' when nothing is pending or the queue is paused
-- as a whole (resume wakes its workers). Uses the store's clock.

if redis.call('HEXISTS', KEYS[3], '') == 1 then return '' end

local now = clock('')
local best = nil
for _, level in ipairs(pending_levels(KEYS[2])) do
  local head = redis.call('ZRANGE', pending_key(KEYS[1], level), 0, 0, 'WITHSCORES')
  if head[2] then
    local due = tonumber(head[2])
    if not best or due < best then best = due end
  end
end
if not best then return '' end
return fmt(math.max(0, best - now))
