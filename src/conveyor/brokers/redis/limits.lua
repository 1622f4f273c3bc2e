-- limits: this queue's limit keys as an operator sees them (docs/flow-control.md).
--
-- KEYS[1] <base>:jobs (names the limit keys)   KEYS[2] <base>:counts
-- ARGV[1] now
-- Returns 8 fields per key: key, rate, burst, concurrency (the effective rule: the run-time one,
-- else the rule a group declared for the key), override ('1' or '0'), slots held, tokens now
-- ('' without a rate), closed until ('' unless later than now). Keys listed: those with a
-- run-time rule, a slot held, a bucket not full, a throttle, or queued jobs.

local now = clock(ARGV[1])
local b = base_of(KEYS[1])
local state = {}
local flat = redis.call('HGETALL', b .. ':limits')
for i = 1, #flat, 2 do
  local key, field = string.match(flat[i], '^(.*)\31(.)$')
  if key then
    local s = state[key] or {}
    state[key] = s
    s[field] = flat[i + 1]
  end
end
local queued = {}
for _, level in ipairs(pending_levels(KEYS[2])) do
  for _, grp in ipairs(redis.call('ZRANGE', b .. ':groups:' .. level, 0, -1)) do
    for _, k in ipairs(group_keys(grp)) do queued[k] = true end
  end
end
-- Declared rules: the latest of a queued group, else of any group the queue kept.
local declared = {}
local grules = b .. ':grules'
local rules = redis.call('HGETALL', grules)
for i = 1, #rules, 2 do
  for _, kd in ipairs(limits_lib().group_rules(grules, rules[i])) do
    if kd[2] and (not declared[kd[1]] or queued[kd[1]]) then declared[kd[1]] = kd[2] end
  end
end
for k in pairs(queued) do state[k] = state[k] or {} end
local out = {}
for key, s in pairs(state) do
  local override = limits_lib().parse_rule(s.o)
  local rule = override or declared[key] or {0, 1, 0}
  local rate, burst, conc = rule[1], rule[2], rule[3]
  local running = tonumber(s.r) or 0
  local tokens = rate > 0 and limits_lib().bucket_tokens(tonumber(s.t) or 0, now, rate, burst) or nil
  local closed = tonumber(s.c)
  if closed and closed <= now then closed = nil end
  if override or running > 0 or (tokens and tokens < burst) or closed or queued[key] then
    out[#out + 1] = key
    out[#out + 1] = fmt(rate)
    out[#out + 1] = tostring(burst)
    out[#out + 1] = tostring(conc)
    out[#out + 1] = override and '1' or '0'
    out[#out + 1] = tostring(running)
    out[#out + 1] = tokens and fmt(tokens) or ''
    out[#out + 1] = closed and fmt(closed) or ''
  end
end
return out
