-- next_due: seconds until this queue may have a task to claim (0 if one is due).
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:counts   KEYS[3] <base>:paused
-- Returns the seconds as a decimal string, or '' when nothing is pending, everything pending
-- waits for a concurrency slot (a freed slot wakes the waiters) or the queue is paused as a whole
-- (resume wakes its workers). Uses the store's clock.
-- Jobs with limits count by their groups' ready_at (when their limits may allow one), not by
-- their due times, so a worker does not spin on throttled jobs; the queue's own limit, when
-- it allows nothing, defers everything to its next token or the end of its throttle. Due jobs
-- of a paused task count until a reservation parks them (with limits or without).

if redis.call('HEXISTS', KEYS[3], '') == 1 then return '' end

local now = clock('')
local best = nil
local b = base_of(KEYS[1])
for _, level in ipairs(pending_levels(KEYS[2])) do
  local head = redis.call('ZRANGE', pending_key(KEYS[1], level), 0, 0, 'WITHSCORES')
  if head[2] then
    local due = tonumber(head[2])
    if not best or due < best then best = due end
  end
  local group = redis.call('ZRANGE', b .. ':groups:' .. level, 0, 0, 'WITHSCORES')
  local ready_at = score_of(group[2])
  if ready_at and ready_at < INF and (not best or ready_at < best) then best = ready_at end
end
if not best then return '' end
local cache = {}
local qkeys = limits_lib().queue_keys(b .. ':limits', cache)
if #qkeys > 0 then
  local a, at, full = limits_lib().allowance(b .. ':limits', cache, qkeys, now)
  if a <= 0 then
    if full then return '' end
    best = math.max(best, at)
  end
end
return fmt(math.max(0, best - now))
