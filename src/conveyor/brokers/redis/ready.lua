-- ready: how many tasks of each level are due, for splitting a reservation across levels.
--
-- KEYS[1] <base>:jobs (names the pending zsets)
-- ARGV[1] now ('' = the store's clock)   ARGV[2] number of levels   ARGV[3] cap per level
-- Returns {now, due tasks of level 0 (at most cap), of level 1, ...}; now as a decimal string,
-- so the reservation that follows uses the same clock reading.

local now = clock(ARGV[1])
local out = {fmt(now)}
local cap = tonumber(ARGV[3])
for level = 0, tonumber(ARGV[2]) - 1 do
  out[#out + 1] = math.min(cap, redis.call('ZCOUNT', pending_key(KEYS[1], level), '-inf', fmt(now)))
end
return out
