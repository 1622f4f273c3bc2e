-- reserve: lease due tasks of one queue, FIFO by due time within each level.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:running   KEYS[3] <base>:counts   KEYS[4] <base>:dead
-- KEYS[5] <base>:paused
-- ARGV[1] now   ARGV[2] lease seconds   ARGV[3] worker id   ARGV[4] mode, then either
--   mode 'take': how many to take from level 0, 1, ...
--   mode 'fair': the limit, then weight and current value per level of the caller's smooth
--     weighted round robin (conveyor.priority.Fairness), which splits the limit here across
--     the levels with due tasks, exactly as Fairness.split does
-- Returns {k, k values of the round robin's new current values (k = 0 for 'take'), then the
-- leased jobs, 12 fields each (see emit_delivery)}, their attempt and token already counted.
-- Scheduled and ready tasks share the pending zsets: a task is due once its score (due time)
-- is <= now, so promotion of delayed tasks is this range, within the same script. The last
-- level also takes the stored levels above it (see served_levels), after its own.
-- A due record that is corrupt (see unpack_record) is buried in place instead (bury_corrupt),
-- counted dead of the level it was pending in: it costs itself only, never the batch.
-- Pauses (docs/flow-control.md): a queue paused as a whole counts as having nothing due. In
-- 'fair' mode, the due jobs of paused tasks ahead of the first `limit` others of each level are
-- parked first (see park_heads), at most PARK_BUDGET; with that spent, the queue counts as having
-- nothing due this call, and the next one parks on ('take' mode: the ready script parked). A
-- job of a paused task met while claiming (paused since) is parked too.

local now = clock(ARGV[1])
local lease_until = now + tonumber(ARGV[2])
local take, current, served = {}, {}, {}
-- Limits (docs/flow-control.md): whether the queue has its own limit or ever had groups; a queue
-- with neither claims on the plain path, as before limits existed.
local limits_key = base_of(KEYS[1]) .. ':limits'
local marks = redis.call('HMGET', limits_key, '\31o', GROUPED)
local with_limits = marks[1] or marks[2]
local held = pauses_of(KEYS[5])
local stopped = held and held[''] or false

if ARGV[4] == 'take' then
  for i = 5, #ARGV do take[#take + 1] = stopped and 0 or tonumber(ARGV[i]) end
  for l = 1, #take do served[l] = served_levels(KEYS[3], l - 1, #take - 1) end
else
  local limit, weights, left = tonumber(ARGV[5]), {}, {}
  local last = (#ARGV - 5) / 2 - 1
  local levels = {}
  for i = 6, #ARGV, 2 do
    local level = #weights
    weights[level + 1] = tonumber(ARGV[i])
    current[level + 1] = tonumber(ARGV[i + 1])
    served[level + 1] = served_levels(KEYS[3], level, last)
    for _, stored in ipairs(served[level + 1]) do levels[#levels + 1] = stored end
  end
  if held and not stopped then
    stopped = park_heads(KEYS[1], held, levels, limit, now, PARK_BUDGET) == 0
  end
  for level = 0, last do
    left[level + 1] = 0
    for _, stored in ipairs(served[level + 1]) do
      if not stopped then
        left[level + 1] = left[level + 1] + redis.call('ZCOUNT', pending_key(KEYS[1], stored), '-inf', fmt(now))
        if with_limits then
          left[level + 1] = left[level + 1] + redis.call('ZCOUNT', base_of(KEYS[1]) .. ':grouped:' .. stored, '-inf',
            fmt(now))
        end
      end
    end
    take[level + 1] = 0
  end
  for _ = 1, limit do
    local total, best = 0, nil
    for l = 1, #weights do
      if left[l] <= 0 then
        current[l] = 0
      else
        current[l] = current[l] + weights[l]
        total = total + weights[l]
        if not best or current[l] > current[best] then best = l end
      end
    end
    if not best then break end
    current[best] = current[best] - total
    take[best] = take[best] + 1
    left[best] = left[best] - 1
  end
end

local out = {#current}
for l = 1, #current do out[#out + 1] = current[l] end
local saves, leased, t = {}, {}, {}
local lease_s = fmt(lease_until)

-- The queue's own limit caps the claim; a level with groups is claimed by turns (claim_limited).
local cache = {}
local qkeys = marks[1] and limits_lib().queue_keys(limits_key, cache) or {}
local allow = math.huge
if #qkeys > 0 then allow = limits_lib().allowance(limits_key, cache, qkeys, now) end
local got, limited = {}, #qkeys > 0
-- Jobs of paused tasks this call may still park (one-element table: claim_limited lowers it).
local park = {PARK_BUDGET}

-- Claim `asked[l]` at each level l; under limits a level may yield less than asked (its due jobs
-- throttled), and a second round gives the rest to the levels that yielded all they were asked,
-- most urgent first.
local asked, wanted, total = take, 0, 0
for l = 1, #take do
  got[l] = 0
  wanted = wanted + take[l]
end
while asked do
  for l = 1, #take do
    local n = math.min(asked[l], wanted - total)
    for _, level in ipairs(served[l]) do
      n = math.min(n, allow)
      if n <= 0 or park[1] <= 0 then break end
      local pk = pending_key(KEYS[1], level)
      local members, helds
      if with_limits and (#qkeys > 0 or redis.call('ZRANGE', base_of(KEYS[1]) .. ':groups:' .. level, 0, 0)[1]) then
        -- Taken out of their indexes already, limits spent, paused tasks' jobs parked on the way.
        members, helds = limits_lib().claim_limited(KEYS[1], level, n, now, cache, qkeys, held, park)
        allow, limited = allow - #members, true
      else
        -- The due members are the zset's lowest ranks: remove them by rank in one command.
        members = redis.call('ZRANGEBYSCORE', pk, '-inf', fmt(now), 'LIMIT', 0, n)
      end
      while #members > 0 do
        if not helds then redis.call('ZREMRANGEBYRANK', pk, 0, #members - 1) end
        n = n - #members
        local ids = {}
        for k, m in ipairs(members) do ids[k] = member_id(m) end
        local records, bad = load_many(KEYS[1], ids)
        local claimed, parked = 0, 0
        for k, id in ipairs(ids) do
          local r = records[k]
          if r == false then
            bury_corrupt(KEYS[1], KEYS[4], id, bad[k][2], bad[k][1], level, member_seq(members[k]), now)
            tally(t, 'p' .. level, -1)
            tally(t, 'd' .. level, 1)
            -- The slots taken for it are given back (its tokens stay spent, as on release).
            if helds and helds[k] then limits_lib().unhold(cache, helds[k]) end
          elseif r and held and held[r[R_TASK]] and not helds then
            redis.call('ZADD', parked_key(KEYS[1], r[R_TASK]), fmt(r[R_RUN_AT]), id)
            n = n + 1
            park[1] = park[1] - 1
            parked = parked + 1
          elseif r then
            r[R_ATTEMPT] = r[R_ATTEMPT] + 1
            r[R_TOKEN] = r[R_TOKEN] + 1
            r[R_STATE] = 'r'
            r[R_LEASE] = lease_until
            r[R_WORKER] = ARGV[3]
            r[R_STARTED] = now
            if helds then r[R_HELD] = helds[k] end
            saves[#saves + 1] = id
            saves[#saves + 1] = pack_record(r)
            leased[#leased + 1] = lease_s
            leased[#leased + 1] = id
            claimed = claimed + 1
            emit_delivery(out, id, r)
          end
        end
        tally(t, 'p' .. level, -claimed)
        tally(t, 'r' .. level, claimed)
        got[l], total = got[l] + #members - parked, total + #members - parked
        members = {}
        if parked > 0 and n > 0 and park[1] > 0 then  -- some were parked: walk on
          members = redis.call('ZRANGEBYSCORE', pk, '-inf', fmt(now), 'LIMIT', 0, math.min(n, park[1]))
        end
      end
    end
  end
  local again = nil
  if limited and asked == take and total < wanted then
    again = {}
    for l = 1, #take do again[l] = got[l] >= take[l] and wanted or 0 end
  end
  asked = again
end
if limited then limits_lib().save_states(limits_key, cache) end
if #saves > 0 then
  call_many('HSET', KEYS[1], saves, 2)
  zadd_skiplist(KEYS[2], leased)
end
settle(KEYS[3], t)
return out
