-- ready: how many tasks of each level are due, for splitting a reservation across levels.
--
-- KEYS[1] <base>:jobs (names the pending zsets)   KEYS[2] <base>:counts   KEYS[3] <base>:paused
-- ARGV[1] now ('' = the store's clock)   ARGV[2] number of levels   ARGV[3] cap per level
-- Returns {now, due tasks of level 0 (at most cap), of level 1, ...}; now as a decimal string,
-- so the reservation that follows uses the same clock reading. The last level counts the stored
-- levels above it too (see served_levels), as reserve takes them. Jobs with limits count once
-- due, whether or not their limits allow them now. A queue paused as a whole has none due
-- (reserve checks again); one with paused tasks first has the due jobs of those tasks ahead of
-- the first `cap` others of each level parked (see park_heads), and none due if that took more
-- than a call's budget. (Jobs with limits of a paused task are parked by reserve, which meets
-- them at the heads of their groups.)

local now = clock(ARGV[1])
local out = {fmt(now)}
local cap = tonumber(ARGV[3])
local last = tonumber(ARGV[2]) - 1
local held = pauses_of(KEYS[3])
local stopped = held and held[''] or false
if held and not stopped then
  local levels = {}
  for level = 0, last do
    for _, stored in ipairs(served_levels(KEYS[2], level, last)) do levels[#levels + 1] = stored end
  end
  stopped = park_heads(KEYS[1], held, levels, cap, now, PARK_BUDGET) == 0
end
for level = 0, last do
  local due = 0
  for _, stored in ipairs(stopped and {} or served_levels(KEYS[2], level, last)) do
    due = due + redis.call('ZCOUNT', pending_key(KEYS[1], stored), '-inf', fmt(now))
      + redis.call('ZCOUNT', base_of(KEYS[1]) .. ':grouped:' .. stored, '-inf', fmt(now))
  end
  out[#out + 1] = math.min(cap, due)
end
return out
