-- Shared helpers, prepended to every operation script by scripts.py. Defines no keys.
--
-- A queue's keys all start with its base "<prefix>:{<queue>}" and so share one hash slot:
--   <base>:jobs        hash  job id -> MessagePack record (layout below)
--   <base>:keys        hash  idempotency key -> job id
--   <base>:counts      hash  "<state><level>" -> number of jobs (p, r, s, d, c; zero fields removed)
--   <base>:running     zset  job id, scored by lease expiry
--   <base>:dead        zset  job id, scored by finish time
--   <base>:done        zset  succeeded and cancelled job ids, scored by retention expiry
--   <base>:pending:<L> zset  scheduled and ready jobs of level L, scored by due time (see member)
--   <base>:paused      hash  paused task (or '' for the whole queue) -> when it was paused
--   <base>:parked:<T>  zset  job id of task T, scored by due time: due jobs of a paused task
--                            that a reservation set aside; still pending (state p, counted p)
-- The pending and parked zsets are named in the scripts from KEYS[1] (<base>:jobs) since a
-- queue's levels and paused tasks are only known from its records; they are in KEYS[1]'s slot.
-- Wake-ups are published on the channel "<base>:wake" (message: empty).
--
-- Numbers reach redis.call as strings formatted by fmt: Lua's own conversion keeps 14 digits.

-- Record fields. Those a pending job may lack come last and a record is stored without its
-- trailing absent fields, which keeps a queued job's record in a small allocation.
local R_TASK, R_PRIO, R_PAYLOAD, R_RUN_AT, R_ENQUEUED, R_ATTEMPT, R_MAX, R_TOKEN, R_STATE, R_SEQ =
  1, 2, 3, 4, 5, 6, 7, 8, 9, 10
local R_KEY, R_LEASE, R_WORKER, R_STARTED, R_FINISHED, R_RESULT, R_ERRORS = 11, 12, 13, 14, 15, 16, 17
local R_FIELDS = 17

local function fmt(x)
  if not x then return '' end
  return string.format('%.17g', x)
end

-- The caller's "now", or the store's clock when it passed ''.
local function clock(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Enqueue order across queues: the store's clock in microseconds.
local function sequence()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Optional strings cross the wire as '' (none) or '=' .. value.
local function opt_in(s)
  if s == '' then return false end
  return string.sub(s, 2)
end

local function opt_out(v)
  if not v then return '' end
  return '=' .. v
end

-- A pending zset member: 7 bytes of the job's enqueue sequence, then its id, so jobs due at
-- the same time leave in enqueue order.
local function member(id, seq)
  return struct.pack('>I7', seq) .. id
end

local function member_id(m) return string.sub(m, 8) end
-- The sequence in a member, or nil when it is too short to hold one (not written by a script).
local function member_seq(m)
  local ok, seq = pcall(struct.unpack, '>I7', m)
  if ok then return seq end
  return nil
end

local function base_of(jobs) return string.sub(jobs, 1, -6) end
local function pending_key(jobs, level) return base_of(jobs) .. ':pending:' .. level end
local function parked_key(jobs, task) return base_of(jobs) .. ':parked:' .. task end
local function wake(jobs) redis.call('PUBLISH', base_of(jobs) .. ':wake', '') end

-- Two fields are stored relative to others, which keeps a queued job's record in jemalloc's
-- 64-byte class (absolute values take 9 bytes each): the enqueue time as nil when it equals the
-- due time (a job without delay), and the sequence as its difference from the enqueue time in
-- microseconds when that difference is small. Absolute sequences (any time after 1970-01-01
-- 00:36) are larger than the bound, so a stored value is read unambiguously.
local SEQ_DELTA = 2147483648

-- A record's fields are checked for their types when it is read: a record that is not
-- MessagePack, or not an array of the fields below, or has a field of the wrong type (written
-- by a bug or by hand) must cost that record only, never fail a script midway for the others
-- of its batch (Redis keeps a script's writes made before an error).
local STATE_OK = {p = true, r = true, s = true, d = true, c = true}
local MAX_WHOLE = 9007199254740992 -- 2^53: integers above it are not exact
local MAX_LEVEL = 2147483647

local function finite(x) return type(x) == 'number' and x == x and x > -math.huge and x < math.huge end
local function whole(x, max) return finite(x) and x >= 0 and x <= max and x == math.floor(x) end

-- Why a decoded record cannot be used, or nil when its fields have their types. (One function
-- without helpers: every script call creates the closures of this library anew.)
local function flaw(r)
  if type(r) ~= 'table' then return 'not an array of fields' end
  if type(r[R_TASK]) ~= 'string' then return 'task is not a string' end
  if not whole(r[R_PRIO], MAX_LEVEL) then return 'priority is not a level' end
  if type(r[R_PAYLOAD]) ~= 'string' then return 'payload is not a string' end
  if not finite(r[R_RUN_AT]) then return 'run_at is not a time' end
  if not whole(r[R_ATTEMPT], MAX_WHOLE) then return 'attempt is not a count' end
  if not whole(r[R_MAX], MAX_WHOLE) then return 'max_attempts is not a count' end
  if not whole(r[R_TOKEN], MAX_WHOLE) then return 'token is not a count' end
  if not STATE_OK[r[R_STATE]] then return 'state is not one of p r s d c' end
  if not finite(r[R_SEQ]) or r[R_SEQ] ~= math.floor(r[R_SEQ]) then return 'sequence is not an integer' end
  -- Optional fields: absent (nil, false) or of their type.
  if r[R_ENQUEUED] and not finite(r[R_ENQUEUED]) then return 'enqueued_at is not a time' end
  if r[R_LEASE] and not finite(r[R_LEASE]) then return 'lease_until is not a time' end
  if r[R_STARTED] and not finite(r[R_STARTED]) then return 'started_at is not a time' end
  if r[R_FINISHED] and not finite(r[R_FINISHED]) then return 'finished_at is not a time' end
  if r[R_KEY] and type(r[R_KEY]) ~= 'string' then return 'key is not a string' end
  if r[R_WORKER] and type(r[R_WORKER]) ~= 'string' then return 'worker is not a string' end
  if r[R_RESULT] and type(r[R_RESULT]) ~= 'string' then return 'result is not a string' end
  if r[R_ERRORS] and type(r[R_ERRORS]) ~= 'string' then return 'errors is not a string' end
  return nil
end

-- The record stored as `raw`, or false and why it cannot be used.
local function unpack_record(raw)
  local ok, r = pcall(cmsgpack.unpack, raw)
  if not ok then return false, 'not MessagePack: ' .. tostring(r) end
  local why = flaw(r)
  if why then return false, why end
  if not r[R_ENQUEUED] then r[R_ENQUEUED] = r[R_RUN_AT] end
  local s = r[R_SEQ]
  if s > -SEQ_DELTA and s < SEQ_DELTA then r[R_SEQ] = math.floor(r[R_ENQUEUED] * 1000000) + s end
  if not whole(r[R_SEQ], MAX_WHOLE) then return false, 'sequence is out of range' end
  return r
end

-- A sequence as stored: relative to `base`, the enqueue time in whole microseconds, when that
-- difference is small, else absolute.
local function stored_seq(seq, base)
  local delta = seq - base
  if delta > -SEQ_DELTA and delta < SEQ_DELTA then return delta end
  return seq
end

-- Make a packed copy's enqueue time and sequence relative; `enqueued` and `seq` are absolute.
local function relate(packed, enqueued, seq)
  packed[R_ENQUEUED] = enqueued ~= packed[R_RUN_AT] and enqueued
  packed[R_SEQ] = stored_seq(seq, math.floor(enqueued * 1000000))
  return packed
end

-- The record of `id`: nil when there is none, false, why and the raw bytes when it is corrupt.
local function load(jobs, id)
  local raw = redis.call('HGET', jobs, id)
  if not raw then return nil end
  local r, why = unpack_record(raw)
  return r, why, raw
end

-- A record's stored form: MessagePack of its fields up to the last present one, the enqueue
-- time and sequence made relative (see unpack_record). `r` itself is left as it was.
-- (The copy is a table constructor, which sizes the table once: filling an empty table grows it
-- four times, a quarter of the cost of packing.)
local function pack_record(r)
  local last = R_FIELDS
  while last > 0 and not r[last] do last = last - 1 end
  local packed = {r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
    r[14], r[15], r[16], r[17]}
  for i = 1, last do
    if packed[i] == nil then packed[i] = false end
  end
  for i = last + 1, R_FIELDS do packed[i] = nil end
  return cmsgpack.pack(relate(packed, r[R_ENQUEUED], r[R_SEQ]))
end

local function save(jobs, id, r)
  redis.call('HSET', jobs, id, pack_record(r))
end

-- Run `cmd key args...` over a flat argument list in chunks (Lua's unpack is bounded by the C
-- stack); `width` arguments belong together (2 for field/value or score/member pairs).
local CHUNK = 1000
local function call_many(cmd, key, args, width)
  local step = CHUNK * width
  for i = 1, #args, step do
    redis.call(cmd, key, unpack(args, i, math.min(#args, i + step - 1)))
  end
end

-- ZADD of score/member pairs to a zset kept in skiplist encoding. Redis keeps a zset of up to
-- 128 short members as a listpack, where every insert scans and parses the stored scores: 4 us
-- per member at 64 members, ten times a skiplist's cost. The lease index (<base>:running) stays
-- that small under any load and takes an insert per reservation, so it is created, or converted
-- once, as a skiplist by adding a member longer than a listpack holds and removing it again;
-- Redis never converts a zset back to a listpack while it has members.
local LONG_MEMBER = string.rep('~', 80)
local function zadd_skiplist(key, args)
  local convert = redis.call('OBJECT', 'ENCODING', key) ~= 'skiplist'
  if convert then redis.call('ZADD', key, '+inf', LONG_MEMBER) end
  call_many('ZADD', key, args, 2)
  if convert then redis.call('ZREM', key, LONG_MEMBER) end
end

-- Stored records of `ids` as MessagePack (false for those missing), one HMGET per chunk.
local function raw_many(jobs, ids)
  local out = {}
  for i = 1, #ids, CHUNK do
    local raws = redis.call('HMGET', jobs, unpack(ids, i, math.min(#ids, i + CHUNK - 1)))
    for k, raw in ipairs(raws) do out[i + k - 1] = raw end
  end
  return out
end

-- Records of `ids` (nil for those missing, false for those corrupt), and per corrupt record
-- {why, raw bytes} by index.
local function load_many(jobs, ids)
  local out, bad = {}, {}
  for i, raw in ipairs(raw_many(jobs, ids)) do
    if raw then
      local r, why = unpack_record(raw)
      out[i] = r
      if not r then bad[i] = {why, raw} end
    end
  end
  return out, bad
end

-- A new pending record.
local function record(task, prio, payload, run_at, enqueued_at, max, token, seq, key, errors)
  return {task, prio, payload, run_at, enqueued_at, 0, max, token, 'p', seq, key, false, false,
    false, false, false, errors}
end

local function bump(counts, field, by)
  if redis.call('HINCRBY', counts, field, by) <= 0 then redis.call('HDEL', counts, field) end
end

-- Count changes of a batch, summed per field and written once each by settle.
local function tally(t, field, by) t[field] = (t[field] or 0) + by end
local function settle(counts, t)
  for field, by in pairs(t) do
    if by ~= 0 then bump(counts, field, by) end
  end
end

-- Levels with jobs pending, from the counts hash.
local function pending_levels(counts)
  local levels = {}
  local fields = redis.call('HKEYS', counts)
  for _, f in ipairs(fields) do
    if string.sub(f, 1, 1) == 'p' then levels[#levels + 1] = tonumber(string.sub(f, 2)) end
  end
  table.sort(levels)
  return levels
end

-- The stored levels a worker's level takes, in order: its own, and for its last level (last) also
-- the levels above it that hold pending jobs, which a producer configured with more levels wrote:
-- they run after the last level's due jobs, rather than never.
local function served_levels(counts, level, last)
  local levels = {level}
  if level == last then
    for _, l in ipairs(pending_levels(counts)) do
      if l > last then levels[#levels + 1] = l end
    end
  end
  return levels
end

-- Jobs of paused tasks a reservation parks at most per call (see docs/flow-control.md).
local PARK_BUDGET = 1000

-- The pauses in a queue's <base>:paused hash: nil when there are none, else the set of paused
-- tasks, '' standing for the whole queue.
local function pauses_of(paused)
  local fields = redis.call('HKEYS', paused)
  if #fields == 0 then return nil end
  local held = {}
  for _, t in ipairs(fields) do held[t] = true end
  return held
end

-- Park the due jobs of the paused tasks `held` that lie ahead of the first `limit` other due
-- jobs of each of `levels` (out of the pending zset, into the task's parked zset, see above),
-- at most `budget` of them; return the budget left, 0 when the heads may not all be clear.
local function park_heads(jobs, held, levels, limit, now, budget)
  for _, level in ipairs(levels) do
    local pk = pending_key(jobs, level)
    local free = 0
    while free < limit and budget > 0 do
      local members = redis.call('ZRANGEBYSCORE', pk, '-inf', fmt(now), 'LIMIT', free, limit - free)
      if #members == 0 then break end
      local ids = {}
      for k, m in ipairs(members) do ids[k] = member_id(m) end
      local records = load_many(jobs, ids)
      for k, id in ipairs(ids) do
        local r = records[k]
        if r and held[r[R_TASK]] and budget > 0 then
          redis.call('ZREM', pk, members[k])
          redis.call('ZADD', parked_key(jobs, r[R_TASK]), fmt(r[R_RUN_AT]), id)
          budget = budget - 1
        else
          free = free + 1
        end
      end
    end
    if budget <= 0 then return 0 end
  end
  return budget
end

-- Errors are kept as JSON text and appended without decoding, so floats keep every digit.
local function append_error(errors, err)
  if not errors or errors == '[]' then return '[' .. err .. ']' end
  return string.sub(errors, 1, -2) .. ',' .. err .. ']'
end

-- A record as 18 reply fields: id, task, priority, state, payload, attempt, max_attempts, token,
-- run_at, enqueued_at, started_at, finished_at, key, result, errors, worker, lease_until, seq.
local function emit(out, id, r)
  local n = #out
  out[n + 1] = id
  out[n + 2] = r[R_TASK]
  out[n + 3] = tostring(r[R_PRIO])
  out[n + 4] = r[R_STATE]
  out[n + 5] = r[R_PAYLOAD]
  out[n + 6] = tostring(r[R_ATTEMPT])
  out[n + 7] = tostring(r[R_MAX])
  out[n + 8] = tostring(r[R_TOKEN])
  out[n + 9] = fmt(r[R_RUN_AT])
  out[n + 10] = fmt(r[R_ENQUEUED])
  out[n + 11] = fmt(r[R_STARTED])
  out[n + 12] = fmt(r[R_FINISHED])
  out[n + 13] = opt_out(r[R_KEY])
  out[n + 14] = opt_out(r[R_RESULT])
  out[n + 15] = r[R_ERRORS] or '[]'
  out[n + 16] = opt_out(r[R_WORKER])
  out[n + 17] = fmt(r[R_LEASE])
  out[n + 18] = fmt(r[R_SEQ])
end

-- A leased job as the 10 reply fields a worker needs: id, task, priority, payload, attempt,
-- max_attempts, token, run_at, enqueued_at ('' when it is run_at), key (see wire.delivery).
local function emit_delivery(out, id, r)
  local n = #out
  out[n + 1] = id
  out[n + 2] = r[R_TASK]
  out[n + 3] = r[R_PRIO]
  out[n + 4] = r[R_PAYLOAD]
  out[n + 5] = r[R_ATTEMPT]
  out[n + 6] = r[R_MAX]
  out[n + 7] = r[R_TOKEN]
  out[n + 8] = fmt(r[R_RUN_AT])
  out[n + 9] = r[R_ENQUEUED] ~= r[R_RUN_AT] and fmt(r[R_ENQUEUED]) or ''
  out[n + 10] = opt_out(r[R_KEY])
end

-- Drop a job's idempotency key if the job still holds it.
local function free_key(keys, id, r)
  if r[R_KEY] and redis.call('HGET', keys, r[R_KEY]) == id then redis.call('HDEL', keys, r[R_KEY]) end
end
