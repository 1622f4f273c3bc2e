-- adopt: the receiving half of a replay into another queue; stores dead jobs of other queues
-- here as pending and due now, attempts reset, errors kept. The sender then purges them.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:keys   KEYS[3] <base>:counts
-- ARGV[1] now   ARGV[2..] 11 fields per job: id, task, priority, payload, key (optional
--   string), max_attempts, errors JSON, enqueued_at, token, seq, headers (optional string)
-- Returns {'ok', n} or, storing nothing, {'conflict', job id, key, holder id} when a job's key
-- is held here by another job (or by another job of the batch), or {'invalid', job id} when a
-- job's numeric fields do not read as numbers.

local now = clock(ARGV[1])
local held = {}
for i = 2, #ARGV, 11 do
  local id, key = ARGV[i], opt_in(ARGV[i + 4])
  for _, f in ipairs({2, 5, 7, 8, 9}) do
    if not finite(tonumber(ARGV[i + f])) then return {'invalid', id} end
  end
  if key then
    local holder = held[key] or redis.call('HGET', KEYS[2], key)
    if holder and holder ~= id then return {'conflict', id, key, holder} end
    held[key] = id
  end
end
local n = 0
for i = 2, #ARGV, 11 do
  local id, level, key = ARGV[i], tonumber(ARGV[i + 2]), opt_in(ARGV[i + 4])
  if redis.call('HEXISTS', KEYS[1], id) == 0 then
    local r = record(ARGV[i + 1], level, ARGV[i + 3], now, tonumber(ARGV[i + 7]), tonumber(ARGV[i + 5]),
      tonumber(ARGV[i + 8]), tonumber(ARGV[i + 9]), key, ARGV[i + 6])
    r[R_HEADERS] = opt_in(ARGV[i + 10])
    save(KEYS[1], id, r)
    redis.call('ZADD', pending_key(KEYS[1], level), fmt(now), member(id, r[R_SEQ]))
    bump(KEYS[3], 'p' .. level, 1)
    if key then redis.call('HSET', KEYS[2], key, id) end
    n = n + 1
  end
end
if n > 0 then wake(KEYS[1]) end
return {'ok', n}
