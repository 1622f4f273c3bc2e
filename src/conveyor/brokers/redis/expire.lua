-- expire: delete finished (succeeded, cancelled) jobs whose retention ended, with their keys;
-- and limit state at rest (docs/flow-control.md), so tenants seen once do not stay for good.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:keys   KEYS[3] <base>:counts   KEYS[4] <base>:done
-- ARGV[1] now   ARGV[2] at most this many
-- Returns how many jobs were deleted. A corrupt record (see unpack_record) is deleted too; the
-- count of its state and level drops when its first bytes tell both, its key is freed when they
-- tell it.
--
-- Limits: at most ARGV[2] fields of <base>:grules and of <base>:limits are examined per call,
-- from where the previous call stopped (HSCAN cursors in <base>:sweep, fields g and k).
--   * A group's declared rules are deleted once no job of the group is pending (its level's
--     groups row) or running, and no job of the queue is parked (a parked job is pending
--     outside every index: the queue's pending count tells that some are, not whose).
--   * A key's bucket and throttle fields are deleted once the bucket is full (tat not after
--     now), the throttle is over, no slot is held and no run-time rule names the key: the
--     state it then has is the one a key never seen has, so nothing a claim reads changes.

local now = clock(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', fmt(now), 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local r, _, raw = load(KEYS[1], id)
  redis.call('ZREM', KEYS[4], id)
  if r == false then
    local s = salvage(raw)
    redis.call('HDEL', KEYS[1], id)
    if type(s[R_KEY]) == 'string' then free_key(KEYS[2], id, s) end
    if (s[R_STATE] == 's' or s[R_STATE] == 'c') and whole(s[R_PRIO], MAX_LEVEL) then
      bump(KEYS[3], s[R_STATE] .. s[R_PRIO], -1)
    end
  elseif r then
    redis.call('HDEL', KEYS[1], id)
    free_key(KEYS[2], id, r)
    bump(KEYS[3], r[R_STATE] .. r[R_PRIO], -1)
  end
end

-- Where the next call's HSCAN starts (none kept once a pass is complete).
local function save_cursor(sweep, field, cursor)
  if cursor == '0' then
    redis.call('HDEL', sweep, field)
  else
    redis.call('HSET', sweep, field, cursor)
  end
end

local b = base_of(KEYS[1])
local limits, grules, sweep = b .. ':limits', b .. ':grules', b .. ':sweep'
-- HSCAN through pcall: a user granted the least ACL of an earlier version (without it) skips
-- the sweep rather than failing the expiry.
local function scan(key, field, budget)
  local page = redis.pcall('HSCAN', key, redis.call('HGET', sweep, field) or '0', 'COUNT', budget)
  if type(page) ~= 'table' or page.err then return nil end
  return page
end

if redis.call('HGET', limits, GROUPED) then
  local budget = tonumber(ARGV[2])
  local levels = pending_levels(KEYS[3])
  -- Groups.
  local parked = 0
  for _, level in ipairs(levels) do
    parked = parked + (tonumber(redis.call('HGET', KEYS[3], 'p' .. level)) or 0)
      - redis.call('ZCOUNT', pending_key(KEYS[1], level), '-inf', '+inf')
      - redis.call('ZCOUNT', b .. ':grouped:' .. level, '-inf', '+inf')
  end
  local page = parked <= 0 and scan(grules, 'g', budget)
  if page then
    local idle, running = {}, nil
    for i = 1, #page[2], 2 do
      local grp, queued = page[2][i], false
      for _, level in ipairs(levels) do
        if redis.call('ZSCORE', b .. ':groups:' .. level, grp) then
          queued = true
          break
        end
      end
      if not queued then
        if not running then
          running = {}
          local ids = redis.call('ZRANGE', b .. ':running', 0, -1)
          if #ids > 0 then
            for _, r in pairs(load_many(KEYS[1], ids)) do
              local g = r and group_of(r)
              if g then running[g] = true end
            end
          end
        end
        if not running[grp] then idle[#idle + 1] = grp end
      end
    end
    if #idle > 0 then call_many('HDEL', grules, idle, 1) end
    save_cursor(sweep, 'g', page[1])
  end
  -- Keys.
  page = scan(limits, 'k', budget) or {'0', {}}
  local seen, gone = {}, {}
  for i = 1, #page[2], 2 do
    local key = string.match(page[2][i], '^(.*)\31[tc]$')
    if key and not seen[key] then
      seen[key] = true
      local v = redis.call('HMGET', limits, key .. '\31o', key .. '\31t', key .. '\31r', key .. '\31c')
      if not v[1] and (tonumber(v[3]) or 0) <= 0 and (tonumber(v[2]) or 0) <= now
        and (tonumber(v[4]) or 0) <= now then
        gone[#gone + 1] = key .. '\31t'
        gone[#gone + 1] = key .. '\31c'
      end
    end
  end
  if #gone > 0 then call_many('HDEL', limits, gone, 1) end
  save_cursor(sweep, 'k', page[1])
end
return #ids
