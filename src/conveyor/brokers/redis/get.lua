-- get: read jobs of this queue by id.
--
-- KEYS[1] <base>:jobs
-- ARGV[1] now   ARGV[2..] job ids
-- Returns {now, then 20 fields per job found (see emit; a corrupt record as emit_corrupt)}.

local now = clock(ARGV[1])
local out = {fmt(now)}
for i = 2, #ARGV do
  local r, why, raw = load(KEYS[1], ARGV[i])
  if r then
    emit(out, ARGV[i], r)
  elseif r == false then
    emit_corrupt(out, ARGV[i], raw, why, 'd', now)
  end
end
return out
