-- stats: counts of one queue per state and level, and its oldest due task.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:counts   KEYS[3] <base>:paused
-- ARGV[1] now
-- Returns {now, then triples state, level, count} with states ready, scheduled, running,
-- succeeded, dead, cancelled, and one triple 'oldest', level, due time per level with due tasks.
-- A parked job (see lib) is pending and due: it counts as ready, and may be the oldest.

local now = clock(ARGV[1])
local names = {r = 'running', s = 'succeeded', d = 'dead', c = 'cancelled'}
local out = {fmt(now)}
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do
  local state, level = string.sub(flat[i], 1, 1), string.sub(flat[i], 2)
  if state == 'p' then
    local pk = pending_key(KEYS[1], level)
    local scheduled = redis.call('ZCOUNT', pk, '(' .. fmt(now), '+inf')
    local ready = tonumber(flat[i + 1]) - scheduled
    for _, t in ipairs({{'ready', ready}, {'scheduled', scheduled}}) do
      out[#out + 1] = t[1]
      out[#out + 1] = level
      out[#out + 1] = t[2]
    end
    local head = redis.call('ZRANGE', pk, 0, 0, 'WITHSCORES')
    if head[2] and tonumber(head[2]) <= now then
      out[#out + 1] = 'oldest'
      out[#out + 1] = level
      out[#out + 1] = head[2]
    end
  else
    out[#out + 1] = names[state]
    out[#out + 1] = level
    out[#out + 1] = tonumber(flat[i + 1])
  end
end
for _, task in ipairs(redis.call('HKEYS', KEYS[3])) do
  if task ~= '' then
    local head = redis.call('ZRANGE', parked_key(KEYS[1], task), 0, 0, 'WITHSCORES')
    local r = head[1] and load(KEYS[1], head[1])
    if r then
      out[#out + 1] = 'oldest'
      out[#out + 1] = r[R_PRIO]
      out[#out + 1] = head[2]
    end
  end
end
return out
