-- get: read jobs of this queue by id.
--
-- KEYS[1] <base>:jobs
-- ARGV[1] now   ARGV[2..] job ids
-- Returns {now, then 18 fields per job found (see emit)}.

local out = {fmt(clock(ARGV[1]))}
for i = 2, #ARGV do
  local r = load(KEYS[1], ARGV[i])
  if r then emit(out, ARGV[i], r) end
end
return out
