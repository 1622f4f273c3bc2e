-- stats: counts of one queue per state and level, and its oldest due task.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:counts   KEYS[3] <base>:paused
-- ARGV[1] now
-- Returns {now, then triples state, level, count} with states ready, scheduled, running,
-- succeeded, dead, cancelled, and one triple 'oldest', level, due time per level with due tasks.
-- A parked job (see lib) is pending and due: it counts as ready, and may be the oldest.
-- Limits (docs/flow-control.md): one more triple 'throttled', 0, count: the ready jobs that limits
-- hold back now, those of groups waiting (ready_at later than now: for a token, a slot or a
-- throttle's end, as the last claim that examined them found), or every ready job while the
-- queue's own limit allows no start. A queue that never had limits reads one hash field for it.

local now = clock(ARGV[1])
local names = {r = 'running', s = 'succeeded', d = 'dead', c = 'cancelled'}
local out = {fmt(now)}
local ready_total = 0
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do
  local state, level = string.sub(flat[i], 1, 1), string.sub(flat[i], 2)
  if state == 'p' then
    local pk, gk = pending_key(KEYS[1], level), base_of(KEYS[1]) .. ':grouped:' .. level
    local later = '(' .. fmt(now)
    local scheduled = redis.call('ZCOUNT', pk, later, '+inf') + redis.call('ZCOUNT', gk, later, '+inf')
    local ready = tonumber(flat[i + 1]) - scheduled
    ready_total = ready_total + ready
    for _, t in ipairs({{'ready', ready}, {'scheduled', scheduled}}) do
      out[#out + 1] = t[1]
      out[#out + 1] = level
      out[#out + 1] = t[2]
    end
    for _, zs in ipairs({pk, gk}) do
      local head = redis.call('ZRANGE', zs, 0, 0, 'WITHSCORES')
      if head[2] and tonumber(head[2]) <= now then
        out[#out + 1] = 'oldest'
        out[#out + 1] = level
        out[#out + 1] = head[2]
      end
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
local b = base_of(KEYS[1])
local marks = redis.call('HMGET', b .. ':limits', '\31o', GROUPED)
local throttled = 0
if marks[1] and ready_total > 0 then
  local cache = {}
  local qkeys = limits_lib().queue_keys(b .. ':limits', cache)
  if #qkeys > 0 and limits_lib().allowance(b .. ':limits', cache, qkeys, now) <= 0 then throttled = ready_total end
end
if marks[2] and throttled == 0 then
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 1) == 'p' then
      local level = string.sub(flat[i], 2)
      for _, grp in ipairs(redis.call('ZRANGEBYSCORE', b .. ':groups:' .. level, '(' .. fmt(now), '+inf')) do
        throttled = throttled + redis.call('ZCOUNT', b .. ':gp:' .. level .. ':' .. grp, '-inf', fmt(now))
      end
    end
  end
end
out[#out + 1] = 'throttled'
out[#out + 1] = 0
out[#out + 1] = throttled
return out
