-- stats: counts of one queue per state and level, and its oldest due task.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:counts
-- ARGV[1] now
-- Returns {now, then triples state, level, count} with states ready, scheduled, running,
-- succeeded, dead, cancelled, and one triple 'oldest', level, due time per level with due tasks.

local now = clock(ARGV[1])
local names = {r = 'running', s = 'succeeded', d = 'dead', c = 'cancelled'}
local out = {fmt(now)}
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do
  local state, level = string.sub(flat[i], 1, 1), string.sub(flat[i], 2)
  if state == 'p' then
    local pk, gk = pending_key(KEYS[1], level), base_of(KEYS[1]) .. ':grouped:' .. level
    local ready = redis.call('ZCOUNT', pk, '-inf', fmt(now)) + redis.call('ZCOUNT', gk, '-inf', fmt(now))
    for _, t in ipairs({{'ready', ready}, {'scheduled', tonumber(flat[i + 1]) - ready}}) do
      out[#out + 1] = t[1]
      out[#out + 1] = level
      out[#out + 1] = t[2]
    end
    if ready > 0 then
      for _, zs in ipairs({pk, gk}) do
        local head = redis.call('ZRANGE', zs, 0, 0, 'WITHSCORES')
        if head[2] then
          out[#out + 1] = 'oldest'
          out[#out + 1] = level
          out[#out + 1] = head[2]
        end
      end
    end
  else
    out[#out + 1] = names[state]
    out[#out + 1] = level
    out[#out + 1] = tonumber(flat[i + 1])
  end
end
return out
