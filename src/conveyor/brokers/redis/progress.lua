-- progress: store the latest progress of running jobs (docs/hooks.md), each fenced by its token.
--
-- KEYS[1] <base>:jobs
-- ARGV[1..] job id, token, progress (JSON text [value, message]) triples
-- Returns how many were stored (a job not running under that token is left as it is).

local n = 0
for i = 1, #ARGV, 3 do
  local id = ARGV[i]
  local r = load(KEYS[1], id)
  if r and r[R_STATE] == 'r' and r[R_TOKEN] == tonumber(ARGV[i + 1]) then
    r[R_PROGRESS] = ARGV[i + 2]
    save(KEYS[1], id, r)
    n = n + 1
  end
end
return n
