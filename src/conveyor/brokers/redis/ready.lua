-- ready: how many tasks of each level are due, for splitting a reservation across levels.
--
-- KEYS[1] <base>:jobs (names the pending zsets)   KEYS[2] <base>:counts   KEYS[3] <base>:paused
-- ARGV[1] now ('' = the store's clock)   ARGV[2] number of levels   ARGV[3] cap per level
-- Returns {now, due tasks of level 0 (at most cap), of level 1, ...}; now as a decimal string,
-- so the reservation that follows uses the same clock reading. The last level counts the stored
-- levels above it too (see served_levels), as reserve takes them. A queue paused as a whole has
-- none due (reserve checks again).

local now = clock(ARGV[1])
local out = {fmt(now)}
local cap = tonumber(ARGV[3])
local last = tonumber(ARGV[2]) - 1
local stopped = redis.call('HEXISTS', KEYS[3], '') == 1
for level = 0, last do
  local due = 0
  for _, stored in ipairs(stopped and {} or served_levels(KEYS[2], level, last)) do
    due = due + redis.call('ZCOUNT', pending_key(KEYS[1], stored), '-inf', fmt(now))
  end
  out[#out + 1] = math.min(cap, due)
end
return out
