-- jobs: list jobs of this queue for operators, filtered by state and task.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:counts   KEYS[3] <base>:running   KEYS[4] <base>:dead
-- KEYS[5] <base>:done   KEYS[6] <base>:paused
-- ARGV[1] now   ARGV[2] state ('' for any)   ARGV[3] task (optional string)   ARGV[4] how many
-- Returns {now, then 20 fields per job (see emit)}: the first ARGV[4] matches of each index in
-- its own order (pending by due time, dead and finished newest first; every running job; for
-- any state, the most recently enqueued); the caller merges and orders them.
-- A listing with a task filter walks its index until it has enough matches. A corrupt record
-- is listed as emit_corrupt shows it (its task CORRUPT_TASK), in the state of its index.

local now = clock(ARGV[1])
local state, task, want = ARGV[2], opt_in(ARGV[3]), tonumber(ARGV[4])
local out = {fmt(now)}
local CHUNK = 200

local function wanted(r, stored)
  return (not task or r[R_TASK] == task) and (not stored or r[R_STATE] == stored)
end
local function corrupt_wanted() return not task or task == CORRUPT_TASK end

-- Walk a zset in chunks (fetch(offset) returns the next members), keeping matching records.
local function walk(fetch, stored, to_id)
  local found, offset = 0, 0
  while found < want do
    local ids = fetch(offset)
    for _, m in ipairs(ids) do
      local id = to_id and to_id(m) or m
      local r, why, raw = load(KEYS[1], id)
      if found < want then
        if r and wanted(r, stored) then
          emit(out, id, r)
          found = found + 1
        elseif r == false and corrupt_wanted() then
          emit_corrupt(out, id, raw, why, stored, now)
          found = found + 1
        end
      end
    end
    if #ids < CHUNK then break end
    offset = offset + CHUNK
  end
end

if state == 'scheduled' or state == 'ready' then
  local low, high = '-inf', fmt(now)
  if state == 'scheduled' then low, high = '(' .. fmt(now), '+inf' end
  for _, level in ipairs(pending_levels(KEYS[2])) do
    -- Jobs without limits, then those with limits (each index walked as far as `want`).
    for _, pk in ipairs({pending_key(KEYS[1], level), base_of(KEYS[1]) .. ':grouped:' .. level}) do
      walk(function(offset) return redis.call('ZRANGEBYSCORE', pk, low, high, 'LIMIT', offset, CHUNK) end, 'p',
        member_id)
    end
  end
  if state == 'ready' then  -- and the due jobs of paused tasks, set aside (see lib)
    for _, paused in ipairs(redis.call('HKEYS', KEYS[6])) do
      if paused ~= '' and (not task or task == paused) then
        local parked = parked_key(KEYS[1], paused)
        walk(function(offset) return redis.call('ZRANGE', parked, offset, offset + CHUNK - 1) end, 'p')
      end
    end
  end
elseif state == 'running' then
  want = math.huge
  walk(function(offset) return redis.call('ZRANGE', KEYS[3], offset, offset + CHUNK - 1) end, 'r')
elseif state == 'dead' then
  walk(function(offset) return redis.call('ZREVRANGE', KEYS[4], offset, offset + CHUNK - 1) end, 'd')
elseif state == 'succeeded' or state == 'cancelled' then
  walk(function(offset) return redis.call('ZREVRANGE', KEYS[5], offset, offset + CHUNK - 1) end,
    string.sub(state, 1, 1))
elseif state == '' then
  local flat, all = redis.call('HGETALL', KEYS[1]), {}
  for i = 1, #flat, 2 do
    local r, why = unpack_record(flat[i + 1])
    if r and wanted(r, nil) then
      all[#all + 1] = {flat[i], r, r[R_SEQ]}
    elseif not r and corrupt_wanted() then
      all[#all + 1] = {flat[i], false, -1, why, flat[i + 1]} -- listed last
    end
  end
  table.sort(all, function(a, b) return a[3] > b[3] end)
  for k = 1, math.min(want, #all) do
    local e = all[k]
    if e[2] then emit(out, e[1], e[2]) else emit_corrupt(out, e[1], e[5], e[4], 'd', now) end
  end
end
return out
