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

local function unpack_record(raw)
  local r = cmsgpack.unpack(raw)
  if not r[R_ENQUEUED] then r[R_ENQUEUED] = r[R_RUN_AT] end
  local s = r[R_SEQ]
  if s > -SEQ_DELTA and s < SEQ_DELTA then r[R_SEQ] = math.floor(r[R_ENQUEUED] * 1000000) + s end
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

local function load(jobs, id)
  local raw = redis.call('HGET', jobs, id)
  if raw then return unpack_record(raw) end
  return nil
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

-- Records of `ids` (nil for those missing).
local function load_many(jobs, ids)
  local out = {}
  for i, raw in ipairs(raw_many(jobs, ids)) do
    if raw then out[i] = unpack_record(raw) end
  end
  return out
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

-- Messages from ARGV[at] (wire.packed_messages): a MessagePack array of [shapes, runs, ids,
-- keys], then their payloads in ARGV[at + 1], ARGV[at + 2], ... A shape holds what messages
-- of a batch mostly share: [task, priority, delay, run_at (nil for none), max_attempts]; runs
-- are [count, shape index] pairs in message order; keys maps a message's index to its
-- idempotency key (nil when no message has one). Each message is read as {id, shape, payload,
-- key or false}: a batch costs one table per message, not one per field.
local M_ID, M_SHAPE, M_PAYLOAD, M_KEY = 1, 2, 3, 4
local S_TASK, S_PRIO, S_DELAY, S_RUN_AT, S_MAX = 1, 2, 3, 4, 5
local function read_messages(at)
  local packed = cmsgpack.unpack(ARGV[at])
  local shapes, runs, ids, keys = packed[1], packed[2], packed[3], packed[4] or {}
  local msgs, i = {}, 0
  for r = 1, #runs, 2 do
    local shape = shapes[runs[r + 1]]
    for _ = 1, runs[r] do
      i = i + 1
      msgs[i] = {ids[i], shape, ARGV[at + i], keys[i] or false}
    end
  end
  return msgs
end

-- Decide, writing nothing, which messages are new: returns a plan or nil and the conflict
-- {key, holder id}. A plan holds per message true (store it), false (its id exists: an
-- earlier try of the same call stored it, before a lost reply; it counts as created) or the
-- id of the job its idempotency key resolved to (not created).
local function plan_enqueue(jobs, keys, msgs)
  local plan, held, ids = {}, {}, {}
  for i, m in ipairs(msgs) do ids[i] = m[M_ID] end
  local stored = raw_many(jobs, ids)
  for i, m in ipairs(msgs) do
    local key = m[M_KEY]
    if stored[i] then
      plan[i] = false
    elseif key then
      local task, payload = m[M_SHAPE][S_TASK], m[M_PAYLOAD]
      local h = held[key]
      if not h then
        local hid = redis.call('HGET', keys, key)
        local r = hid and load(jobs, hid)
        if r then h = {hid, r[R_TASK], r[R_PAYLOAD]} end
      end
      if h then
        if h[2] ~= task or h[3] ~= payload then return nil, {key, h[1]} end
        plan[i] = h[1]
      else
        held[key] = {m[M_ID], task, payload}
        plan[i] = true
      end
    else
      plan[i] = true
    end
  end
  return plan
end

-- Store the messages a plan marks true. A record is built as MessagePack by concatenation
-- (the bytes pack_record would give, its enqueue time and sequence made relative), from parts
-- packed once per shape: tables and a general pack per message cost a third of the script.
local function write_enqueue(jobs, keys, counts, msgs, plan, now)
  local seq = sequence()
  local base = math.floor(now * 1000000)
  local now_s, now_p = fmt(now), cmsgpack.pack(now)
  local records, pending, key_ids, parts, t = {}, {}, {}, {}, {}
  for i, m in ipairs(msgs) do
    if plan[i] == true then
      local shape, id, key = m[M_SHAPE], m[M_ID], m[M_KEY]
      local p = parts[shape]
      if not p then
        local head = cmsgpack.pack(shape[S_TASK], shape[S_PRIO])
        -- Array headers of 10 and 11 fields (fixarray 0x9a, 0x9b); the enqueue time is absent
        -- (false) when it equals the due time.
        p = {'\154' .. head, '\155' .. head, cmsgpack.pack(false, 0, shape[S_MAX], 0, 'p'),
          cmsgpack.pack(now, 0, shape[S_MAX], 0, 'p')}
        parts[shape] = p
      end
      local due = shape[S_RUN_AT] or (now + shape[S_DELAY])
      local s = seq + i
      local stored = stored_seq(s, base)
      local rec
      if due == now then
        rec = (key and p[2] or p[1]) .. cmsgpack.pack(m[M_PAYLOAD]) .. now_p .. p[3] .. cmsgpack.pack(stored)
      else
        rec = (key and p[2] or p[1]) .. cmsgpack.pack(m[M_PAYLOAD], due) .. p[4] .. cmsgpack.pack(stored)
      end
      if key then
        rec = rec .. cmsgpack.pack(key)
        key_ids[#key_ids + 1] = key
        key_ids[#key_ids + 1] = id
      end
      records[#records + 1] = id
      records[#records + 1] = rec
      local level = shape[S_PRIO]
      local zs = pending[level]
      if not zs then
        zs = {}
        pending[level] = zs
      end
      zs[#zs + 1] = (due == now and now_s) or fmt(due)
      zs[#zs + 1] = member(id, s)
    end
  end
  if #records == 0 then return end
  call_many('HSET', jobs, records, 2)
  for level, zs in pairs(pending) do
    call_many('ZADD', pending_key(jobs, level), zs, 2)
    tally(t, 'p' .. level, #zs / 2)
  end
  if #key_ids > 0 then call_many('HSET', keys, key_ids, 2) end
  settle(counts, t)
  wake(jobs)
end

-- Drop a job's idempotency key if the job still holds it.
local function free_key(keys, id, r)
  if r[R_KEY] and redis.call('HGET', keys, r[R_KEY]) == id then redis.call('HDEL', keys, r[R_KEY]) end
end
