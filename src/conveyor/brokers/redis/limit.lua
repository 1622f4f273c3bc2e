-- limit: set or clear a run-time limit of this queue (docs/flow-control.md).
--
-- KEYS[1] <base>:jobs (names the limit keys)   KEYS[2] <base>:counts
-- ARGV[1] 'set' or 'clear'   ARGV[2] the limit key ('' for the queue's own limit)
-- ARGV[3] (set) the rule as "rate burst concurrency"
-- Returns 1, or 0 when clearing a limit that was not set (nothing changed). The groups with the
-- key (every group for the queue's own limit) become claimable from now on (the store's clock:
-- ready_at lowered to it, never raised), their waits on the key's slots dropped, and waiting
-- workers are woken: the next claim applies the new rule. Until that claim, stats count their
-- ready jobs as held back, as they were.

local b = base_of(KEYS[1])
local now_s = fmt(clock(''))
local limits, key = b .. ':limits', ARGV[2]
if ARGV[1] == 'set' then
  if not limits_lib().parse_rule(ARGV[3]) then return redis.error_reply('ERR limit: malformed rule') end
  redis.call('HSET', limits, key .. '\31o', ARGV[3])
elseif redis.call('HDEL', limits, key .. '\31o') == 0 then
  return 0
end
local with_key = nil
if key ~= '' then
  with_key = {}
  for _, grp in ipairs(redis.call('HKEYS', b .. ':grules')) do
    for _, k in ipairs(group_keys(grp)) do
      if k == key then
        with_key[#with_key + 1] = grp
        break
      end
    end
  end
end
for _, level in ipairs(pending_levels(KEYS[2])) do
  local groups = b .. ':groups:' .. level
  local names = with_key or redis.call('ZRANGE', groups, 0, -1)
  local args = {}
  for _, grp in ipairs(names) do
    args[#args + 1] = now_s
    args[#args + 1] = grp
  end
  for i = 1, #args, 2 * CHUNK do
    redis.call('ZADD', groups, 'XX', 'LT', unpack(args, i, math.min(#args, i + 2 * CHUNK - 1)))
  end
end
local wk = b .. ':waiters:' .. key
local waiting = redis.call('HKEYS', wk)
if #waiting > 0 then call_many('HDEL', wk, waiting, 1) end
wake(KEYS[1])
return 1
