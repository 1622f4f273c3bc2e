-- Shared helpers, prepended to every operation script by scripts.py. Defines no keys.
--
-- A queue's keys all start with its base "<prefix>:{<queue>}" and so share one hash slot:
--   <base>:jobs        hash  job id -> MessagePack record (layout below)
--   <base>:keys        hash  idempotency key -> job id
--   <base>:counts      hash  "<state><level>" -> number of jobs (p, r, s, d, c; zero fields removed)
--   <base>:running     zset  job id, scored by lease expiry
--   <base>:dead        zset  job id, scored by finish time
--   <base>:done        zset  succeeded and cancelled job ids, scored by retention expiry
--   <base>:pending:<L> zset  scheduled and ready jobs of level L without limits, scored by due
--                      time (see member); jobs with limits: see Limits below
--   <base>:paused      hash  paused task (or '' for the whole queue) -> when it was paused
--   <base>:parked:<T>  zset  job id of task T, scored by due time: due jobs of a paused task
--                            that a reservation set aside (with limits or without); still
--                            pending (state p, counted p); resume puts them back
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
-- A job with limits (docs/flow-control.md) also has: its group (its limits' keys joined by
-- "\31"), the times it was throttled, and the keys whose concurrency slot it holds while running
-- (an array; "" is the queue's own limit). A job without limits stores none of them.
local R_GROUP, R_THROTTLED, R_HELD = 18, 19, 20
-- A job with headers (docs/hooks.md) stores them last, as JSON text; one without stores nothing.
local R_HEADERS = 21
-- The latest progress a running job reported, as JSON text [value, message]; absent until one.
local R_PROGRESS = 22
local R_FIELDS = 22

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
  if r[R_HEADERS] and type(r[R_HEADERS]) ~= 'string' then return 'headers is not a string' end
  if r[R_PROGRESS] and type(r[R_PROGRESS]) ~= 'string' then return 'progress is not a string' end
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
  local packed, width
  if last > R_ERRORS then  -- with limits, headers or progress: the longer copy (it costs the others 4 % of a claim)
    packed, width = {r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
      r[14], r[15], r[16], r[17], r[18], r[19], r[20], r[21], r[22]}, R_FIELDS
  else
    packed, width = {r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
      r[14], r[15], r[16], r[17]}, R_ERRORS
  end
  for i = 1, last do
    if packed[i] == nil then packed[i] = false end
  end
  for i = last + 1, width do packed[i] = nil end
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

-- A record as 20 reply fields: id, task, priority, state, payload, attempt, max_attempts, token,
-- run_at, enqueued_at, started_at, finished_at, key, result, errors, worker, lease_until, seq,
-- headers and progress (optional strings).
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
  out[n + 19] = opt_out(r[R_HEADERS])
  out[n + 20] = opt_out(r[R_PROGRESS])
end

-- A leased job as the 12 reply fields a worker needs: id, task, priority, payload, attempt,
-- max_attempts, token, run_at, enqueued_at ('' when it is run_at), key, throttled, headers
-- (optional string; see wire.delivery).
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
  local throttled = r[R_THROTTLED]  -- a garbage count reads as none: it costs its record nothing
  out[n + 11] = throttled and whole(throttled, MAX_WHOLE) and throttled or 0
  out[n + 12] = opt_out(r[R_HEADERS])
end

-- == Limits (docs/flow-control.md) ===============================================================
-- Keys of a queue with limits, besides those above (all under its base, so in its slot):
--   <base>:gp:<L>:<grp> zset  pending jobs of group grp at level L, scored and named as pending:<L>
--   <base>:grouped:<L>  zset  every pending job with limits of level L (listings, counts)
--   <base>:groups:<L>   zset  grp -> ready_at: not claimable before (+inf: waits for a slot)
--   <base>:turns:<L>    hash  grp -> turn (round robin; "" the jobs without limits), and
--                             "\31" -> the last turn given
--   <base>:grules       hash  grp -> MessagePack [[key, rate, burst, concurrency], ...] of the
--                             group's latest enqueue (kept after the group empties: a retried
--                             or replayed job returns to it)
--   <base>:limits       hash  "<key>\31o" run-time rule "rate burst concurrency", "<key>\31t" the
--                             bucket's tat, "<key>\31r" slots held, "<key>\31c" closed until;
--                             key "" is the queue's own limit; "\31g" (GROUPED) once it had groups
--   <base>:waiters:<key> hash "<L>\31<grp>" -> 1: groups blocked on the key's concurrency
-- A group's name is its keys joined by "\31", which no key contains. pending:<L> keeps only the
-- jobs without limits, so a queue without limits claims as it did before limits existed.
local SEP = '\31'
local INF = math.huge
-- A field of <base>:limits set once the queue has had a group: reserve reads it with the queue's
-- own limit in one HMGET, and a queue with neither claims on the plain path.
local GROUPED = '\31g'

local function group_of(r)
  local g = r[R_GROUP]
  if type(g) == 'string' and g ~= '' then return g end
  return nil
end

local function group_keys(grp)
  local keys = {}
  for k in string.gmatch(grp, '[^\31]+') do keys[#keys + 1] = k end
  return keys
end

-- A rule set's group name, or nil for one that is not an array of [key, ...] with string keys.
-- Messages of a batch with the same rules share one table: its name is made once.
local group_names = {}
local function group_name(rules)
  local known = group_names[rules]
  if known ~= nil then return known end
  group_names[rules] = false
  if type(rules) ~= 'table' or #rules == 0 then return nil end
  local keys = {}
  for i, x in ipairs(rules) do
    if type(x) ~= 'table' or type(x[1]) ~= 'string' or x[1] == '' then return nil end
    keys[i] = x[1]
  end
  group_names[rules] = table.concat(keys, SEP)
  return group_names[rules]
end

local function score_of(s)
  if not s then return nil end
  if s == 'inf' or s == '+inf' then return INF end
  if s == '-inf' then return -INF end
  return tonumber(s)
end

-- Make a group's row exist with ready_at no later than `due_s`; a new group's turn comes after
-- every other group's of its level.
local function touch_group(jobs, level, grp, due_s)
  local b = base_of(jobs)
  if redis.call('ZADD', b .. ':groups:' .. level, 'LT', due_s, grp) == 1 then
    local turns = b .. ':turns:' .. level
    redis.call('HSET', turns, grp, redis.call('HINCRBY', turns, SEP, 1))
    redis.call('HSET', b .. ':limits', GROUPED, 1)
  end
end

-- Index a pending record: the level's zset, or its group's for a job with limits.
local function to_pending(jobs, id, r)
  local level, due, m = r[R_PRIO], fmt(r[R_RUN_AT]), member(id, r[R_SEQ])
  local grp = group_of(r)
  if not grp then
    redis.call('ZADD', pending_key(jobs, level), due, m)
    return
  end
  local b = base_of(jobs)
  redis.call('ZADD', b .. ':gp:' .. level .. ':' .. grp, due, m)
  redis.call('ZADD', b .. ':grouped:' .. level, due, m)
  touch_group(jobs, level, grp, due)
end

-- Unindex a pending record (an emptied group's row goes at its next claim). Returns 0 when it
-- was in neither index: parked (see above), which the caller then unparks.
local function from_pending(jobs, id, r)
  local level, m = r[R_PRIO], member(id, r[R_SEQ])
  local grp = group_of(r)
  if not grp then return redis.call('ZREM', pending_key(jobs, level), m) end
  local b = base_of(jobs)
  redis.call('ZREM', b .. ':grouped:' .. level, m)
  return redis.call('ZREM', b .. ':gp:' .. level .. ':' .. grp, m)
end

-- The rest of limits, made on first use (limits_lib()): a script on a queue without limits never
-- builds these functions, which would cost every claim a few percent.
local limits_lib_made = nil
local function limits_lib()
  if limits_lib_made then return limits_lib_made end
  local lib
  -- Pending jobs with limits of a batch, by level and group: write_enqueue collects them here.
  local function grouped_list(grouped, level, grp, rules)
    local by_level = grouped[level]
    if not by_level then
      by_level = {}
      grouped[level] = by_level
    end
    local zs = by_level[grp]
    if not zs then
      zs = {rules = rules}
      by_level[grp] = zs
    end
    return zs
  end

  -- Store a batch's grouped pending jobs: their groups' zsets and rows, rules, the level index.
  local function write_grouped(jobs, grouped, t)
    local b = base_of(jobs)
    local rules = {}
    for level, by_level in pairs(grouped) do
      local all = {}
      for grp, zs in pairs(by_level) do
        for k = 1, #zs do all[#all + 1] = zs[k] end
        call_many('ZADD', b .. ':gp:' .. level .. ':' .. grp, zs, 2)
        touch_group(jobs, level, grp, fmt(zs.first))
        rules[grp] = zs.rules
      end
      call_many('ZADD', b .. ':grouped:' .. level, all, 2)
      tally(t, 'p' .. level, #all / 2)
    end
    for grp, r in pairs(rules) do redis.call('HSET', b .. ':grules', grp, cmsgpack.pack(r)) end
  end

  -- A run-time rule {rate, burst, concurrency} from its stored form, or nil.
  local function parse_rule(s)
    if type(s) ~= 'string' then return nil end
    local rate, burst, conc = string.match(s, '^(%S+) (%S+) (%S+)$')
    rate, burst, conc = tonumber(rate), tonumber(burst), tonumber(conc)
    if not rate or not burst or not conc then return nil end
    return {rate, burst, conc}
  end

  -- A limit key's state, read once per script into `cache`: o (run-time rule or nil), t (tat),
  -- r (slots held), c (closed until).
  local function key_state(limits, cache, key)
    local s = cache[key]
    if s then return s end
    local v = redis.call('HMGET', limits, key .. '\31o', key .. '\31t', key .. '\31r', key .. '\31c')
    s = {o = parse_rule(v[1]), t = tonumber(v[2]) or 0, r = tonumber(v[3]) or 0, c = tonumber(v[4]) or 0}
    cache[key] = s
    return s
  end

  local function save_states(limits, cache)
    local sets, dels = {}, {}
    for key, s in pairs(cache) do
      if s.dirty then
        sets[#sets + 1] = key .. '\31t'
        sets[#sets + 1] = fmt(s.t)
        if s.r > 0 then
          sets[#sets + 1] = key .. '\31r'
          sets[#sets + 1] = tostring(s.r)
        else
          dels[#dels + 1] = key .. '\31r'
        end
      end
    end
    if #sets > 0 then call_many('HSET', limits, sets, 2) end
    if #dels > 0 then call_many('HDEL', limits, dels, 1) end
  end

  -- A group's keys, each {key, declared rule {rate, burst, concurrency} or nil}; a corrupt or
  -- missing rules entry declares nothing (run-time rules of its keys still apply).
  local function rules_of(raw, grp)
    local declared = {}
    if raw then
      local ok, t = pcall(cmsgpack.unpack, raw)
      if ok and type(t) == 'table' then
        for _, x in ipairs(t) do
          if type(x) == 'table' and type(x[1]) == 'string' then
            local rate, burst, conc = tonumber(x[2]), tonumber(x[3]), tonumber(x[4])
            if rate and burst and conc then declared[x[1]] = {rate, burst, conc} end
          end
        end
      end
    end
    local out = {}
    for _, k in ipairs(group_keys(grp)) do out[#out + 1] = {k, declared[k]} end
    return out
  end

  local function group_rules(grules, grp)
    return rules_of(redis.call('HGET', grules, grp), grp)
  end

  -- Read the rules of the groups `cands` ({grp, ...} each, given `keys`: theirs and `qkeys`) and
  -- the states of their keys into `cache`, a few commands for all of them.
  local function prefetch(grules, limits, cache, cands, qkeys)
    for i = 1, #cands, CHUNK do
      local names = {}
      for k = i, math.min(#cands, i + CHUNK - 1) do names[#names + 1] = cands[k].grp end
      for k, raw in ipairs(redis.call('HMGET', grules, unpack(names))) do
        local c = cands[i + k - 1]
        c.keys = rules_of(raw, c.grp)
        for _, q in ipairs(qkeys) do c.keys[#c.keys + 1] = q end
      end
    end
    local wanted, fields = {}, {}
    for _, c in ipairs(cands) do
      for _, kd in ipairs(c.keys) do
        local key = kd[1]
        if not cache[key] and not wanted[key] then
          wanted[key] = true
          wanted[#wanted + 1] = key
        end
      end
    end
    for i = 1, #wanted, CHUNK do
      fields = {}
      for k = i, math.min(#wanted, i + CHUNK - 1) do
        local key = wanted[k]
        fields[#fields + 1] = key .. '\31o'
        fields[#fields + 1] = key .. '\31t'
        fields[#fields + 1] = key .. '\31r'
        fields[#fields + 1] = key .. '\31c'
      end
      local v = redis.call('HMGET', limits, unpack(fields))
      for k = i, math.min(#wanted, i + CHUNK - 1) do
        local o = (k - i) * 4
        cache[wanted[k]] = {o = parse_rule(v[o + 1]), t = tonumber(v[o + 2]) or 0, r = tonumber(v[o + 3]) or 0,
          c = tonumber(v[o + 4]) or 0}
      end
    end
  end

  -- The bucket arithmetic of conveyor.limits (GCRA), the same to the last float operation.
  local function bucket_tokens(tat, now, rate, burst)
    if rate <= 0 then return INF end
    return math.max(0, math.floor(burst - math.max(0, tat - now) * rate + 1e-9))
  end

  local function next_token(tat, now, rate, burst)
    if rate <= 0 then return now end
    return math.max(now, tat - (burst - 1) / rate)
  end

  -- How many starts `keys` ({key, declared rule} each) allow now; when none, also the time they
  -- may (`at`) and the keys whose slots are all held (`full`: then only a freed slot tells).
  local function allowance(limits, cache, keys, now)
    local a, at, full = INF, now, nil
    for _, kd in ipairs(keys) do
      local s = key_state(limits, cache, kd[1])
      local rule = s.o or kd[2]
      if s.c > now then
        a = 0
        at = math.max(at, s.c)
      end
      if rule then
        local rate, burst, conc = rule[1], rule[2], rule[3]
        if conc > 0 then
          local room = conc - s.r
          if room <= 0 then
            full = full or {}
            full[#full + 1] = kd[1]
          end
          a = math.min(a, math.max(0, room))
        end
        if rate > 0 then
          local tk = bucket_tokens(s.t, now, rate, burst)
          if tk <= 0 then at = math.max(at, next_token(s.t, now, rate, burst)) end
          a = math.min(a, tk)
        end
      end
    end
    return a, at, full
  end

  -- Spend `count` starts of `keys` (their states in `cache`): a token of each rate, a slot of each
  -- concurrency. Returns the keys whose slot each start holds, or false.
  local function spend_keys(cache, keys, now, count)
    local held = false
    for _, kd in ipairs(keys) do
      local s = cache[kd[1]]
      local rule = s.o or kd[2]
      if rule then
        if rule[1] > 0 then
          -- One start at a time, as `count` claims one by one would: the same float roundings.
          for _ = 1, count do s.t = math.max(s.t, now) + 1 / rule[1] end
          s.dirty = true
        end
        if rule[3] > 0 then
          s.r = s.r + count
          s.dirty = true
          held = held or {}
          held[#held + 1] = kd[1]
        end
      end
    end
    return held
  end

  -- Give back, in `cache`, the slots spend_keys took for a claim that did not happen (`held`, the
  -- keys it returned): a corrupt record buried instead of leased.
  local function unhold(cache, held)
    for _, key in ipairs(held) do
      local s = cache[key]
      if s and s.r > 0 then
        s.r = s.r - 1
        s.dirty = true
      end
    end
  end

  -- Free the slots a job held (a job leaving running with its token current), counted per key in
  -- `freed` for free_slots, which a script calls once after its batch.
  local function free_held(r, freed)
    local held = r[R_HELD]
    r[R_HELD] = false
    if type(held) ~= 'table' then return end
    for _, key in ipairs(held) do
      if type(key) == 'string' then freed[key] = (freed[key] or 0) + 1 end
    end
  end

  -- Give back the slots counted in `freed`: groups waiting for them become claimable (ready_at
  -- -inf: whatever clock the next claim reads). Returns whether waiting workers should be woken.
  local function free_slots(jobs, freed)
    local b = base_of(jobs)
    local limits, woke = b .. ':limits', false
    for key, n in pairs(freed) do
      if redis.call('HINCRBY', limits, key .. '\31r', -n) <= 0 then redis.call('HDEL', limits, key .. '\31r') end
      if key == '' then woke = true end
      local wk = b .. ':waiters:' .. key
      local waiting = redis.call('HKEYS', wk)
      if #waiting > 0 then
        call_many('HDEL', wk, waiting, 1)
        for _, w in ipairs(waiting) do
          local level, grp = string.match(w, '^([^\31]*)\31(.*)$')
          if level then redis.call('ZADD', b .. ':groups:' .. level, 'XX', 'LT', '-inf', grp) end
        end
        woke = true
      end
    end
    return woke
  end

  -- Close every key of a throttled job's group until `till` (RateLimited).
  local function close_group(jobs, r, till)
    local grp = group_of(r)
    if not grp then return end
    local limits = base_of(jobs) .. ':limits'
    for _, key in ipairs(group_keys(grp)) do
      local c = tonumber(redis.call('HGET', limits, key .. '\31c')) or 0
      if till > c then redis.call('HSET', limits, key .. '\31c', fmt(till)) end
    end
  end

  -- The queue's own limit as a key list for allowance/spend_keys ({} when it has none).
  local function queue_keys(limits, cache)
    local s = key_state(limits, cache, '')
    if s.o then return {{'', nil}} end
    return {}
  end

  -- Whether the pending member `m` (in zset `zs`; `grouped`: a job with limits) is a job of a
  -- paused task (`paused`, see pauses_of): then it is parked, as a claim of the plain path
  -- parks, if `park` (the parking budget left, a one-element table) allows, and true is
  -- returned; 'stuck' when the budget is spent (the member stays, nothing may pass it).
  local function park_paused(jobs, zs, m, paused, park, grouped)
    local id = member_id(m)
    local r = load(jobs, id)
    if not (r and paused[r[R_TASK]]) then return false end
    if park[1] <= 0 then return 'stuck' end
    park[1] = park[1] - 1
    redis.call('ZREM', zs, m)
    if grouped then redis.call('ZREM', grouped, m) end
    redis.call('ZADD', parked_key(jobs, r[R_TASK]), fmt(r[R_RUN_AT]), id)
    return true
  end

  -- Claim up to `n` due jobs of one stored level, taking turns between its groups and its jobs
  -- without limits ("", one group): each pass over the groups that may run, in turn order, takes
  -- one job per group, oldest due first, while every key of the group (and `qkeys`, the queue's
  -- own limit) allows it; a served group takes the next turn. A group that cannot run gets the
  -- time it may (or waits for a slot), one without a due job its earliest due time, one without
  -- pending jobs no row. A group's taken jobs are its zset's lowest ranks (due ones sort first):
  -- they are read by rank past those taken and removed once at the end, as are every other write.
  -- With tasks `paused` (see pauses_of; nil for none), a head of a paused task is parked before
  -- anything is spent on it (park_paused, budget `park`), and a group whose head could not be
  -- parked is passed over as it is, claimable again.
  -- Returns the claimed pending members and, for each, the keys whose slots it holds (or false).
  local function claim_turns(jobs, level, n, now, cache, qkeys, paused, park)
    local b = base_of(jobs)
    local groups, turns, limits = b .. ':groups:' .. level, b .. ':turns:' .. level, b .. ':limits'
    local pk, now_s = pending_key(jobs, level), fmt(now)
    local members, helds = {}, {}
    local names = redis.call('ZRANGEBYSCORE', groups, '-inf', now_s)
    if redis.call('ZRANGEBYSCORE', pk, '-inf', now_s, 'LIMIT', 0, 1)[1] then names[#names + 1] = '' end
    if #names == 0 then return members, helds end
    -- Turn order: turns are distinct numbers (a counter) but for corrupt or missing ones, so sort
    -- the numbers natively (a Lua comparator costs a call per comparison) and the ties by name.
    -- A candidate's table is made when a pass first reaches it: most passes end early.
    local order, by_turn = {}, {}
    for i = 1, #names, CHUNK do
      local got = redis.call('HMGET', turns, unpack(names, i, math.min(#names, i + CHUNK - 1)))
      for k, raw in ipairs(got) do
        local turn, grp = tonumber(raw) or 0, names[i + k - 1]
        local had = by_turn[turn]
        if had == nil then
          by_turn[turn] = grp
          order[#order + 1] = turn
        elseif type(had) == 'table' then
          had[#had + 1] = grp
        else
          by_turn[turn] = {had, grp}
        end
      end
    end
    table.sort(order)
    local sorted = {}
    for _, turn in ipairs(order) do
      local had = by_turn[turn]
      if type(had) == 'table' then
        table.sort(had)
        for _, grp in ipairs(had) do sorted[#sorted + 1] = grp end
      else
        sorted[#sorted + 1] = had
      end
    end
    local cands = {}
    local function cand(idx)
      local c = cands[idx]
      if c then return c end
      local grp = sorted[idx]
      if grp == '' then
        c = {grp = '', zs = pk, plain = true, keys = qkeys, taken = 0}
      else
        c = {grp = grp, zs = b .. ':gp:' .. level .. ':' .. grp, taken = 0}
      end
      cands[idx] = c
      return c
    end
    local grules = b .. ':grules'
    local likely = {}  -- the groups the first pass examines, their rules and keys read at once
    for k = 1, math.min(#sorted, n) do
      if not cand(k).plain then likely[#likely + 1] = cand(k) end
    end
    prefetch(grules, limits, cache, likely, qkeys)
    local active, last_turn = #sorted, nil
    local ready_at, gone, waits, unindex = {}, {}, {}, {}
    while n > 0 and active > 0 do
      for idx = 1, #sorted do
        if n <= 0 then break end
        local c = cand(idx)
        if not c.done then
          -- The next job past those taken, and the one after it (for the group's next ready_at).
          local two = redis.call('ZRANGE', c.zs, c.taken, c.taken + 1, 'WITHSCORES')
          local head, due = two[1], score_of(two[2])
          local stuck = false
          while paused and head and due <= now do
            local parked = park_paused(jobs, c.zs, head, paused, park, not c.plain and b .. ':grouped:' .. level)
            if parked ~= true then
              stuck = parked == 'stuck'
              break
            end
            two = redis.call('ZRANGE', c.zs, c.taken, c.taken + 1, 'WITHSCORES')
            head, due = two[1], score_of(two[2])
          end
          c.after = two[3] and two[4] or false
          local a, at, full = 0, now, nil
          if stuck then
            c.done, active, c.stuck = true, active - 1, true
          elseif head and due <= now then
            if not c.keys then
              c.keys = group_rules(grules, c.grp)
              for _, q in ipairs(qkeys) do c.keys[#c.keys + 1] = q end
            end
            a, at, full = allowance(limits, cache, c.keys, now)
          end
          if stuck then
            -- Left claimable as it is: the next claim parks on.
          elseif not head or due > now then
            c.done, active = true, active - 1
            if not c.plain then
              if head then
                ready_at[#ready_at + 1] = two[2]
                ready_at[#ready_at + 1] = c.grp
              else
                gone[#gone + 1] = c.grp
              end
            end
          elseif a <= 0 then
            c.done, active = true, active - 1
            if not c.plain then
              ready_at[#ready_at + 1] = full and '+inf' or fmt(at)
              ready_at[#ready_at + 1] = c.grp
              for _, key in ipairs(full or {}) do waits[#waits + 1] = {key, level .. SEP .. c.grp} end
            end
          else
            local took = {head}
            if active == 1 and n > 1 and a > 1 and not paused then
              -- The last group that may run: its due jobs next in rank, at once.
              took = redis.call('ZRANGEBYSCORE', c.zs, '-inf', now_s, 'LIMIT', c.taken, math.min(n, a))
              c.after = nil  -- unknown: read at the end
            end
            local held = spend_keys(cache, c.keys, now, #took)
            for _, m in ipairs(took) do
              members[#members + 1] = m
              helds[#members] = held
              if not c.plain then unindex[#unindex + 1] = m end
            end
            c.taken = c.taken + #took
            n = n - #took
            if not last_turn then last_turn = tonumber(redis.call('HGET', turns, SEP)) or 0 end
            last_turn = last_turn + 1
            c.turn = last_turn
          end
        end
      end
    end
    local turned = {}
    for idx = 1, #sorted do
      local c = cands[idx]
      if c and c.taken > 0 then
        redis.call('ZREMRANGEBYRANK', c.zs, 0, c.taken - 1)
        turned[#turned + 1] = c.grp
        turned[#turned + 1] = c.turn
        if not c.done and not c.plain and not c.stuck then
          -- Served and not looked at again: its ready_at from what follows its taken jobs.
          local after = c.after
          if after == nil then after = redis.call('ZRANGE', c.zs, 0, 0, 'WITHSCORES')[2] or false end
          if not after then
            gone[#gone + 1] = c.grp
          elseif score_of(after) > now then
            ready_at[#ready_at + 1] = after
            ready_at[#ready_at + 1] = c.grp
          end
        end
      end
    end
    if last_turn then
      turned[#turned + 1] = SEP
      turned[#turned + 1] = last_turn
      call_many('HSET', turns, turned, 2)
    end
    if #unindex > 0 then call_many('ZREM', b .. ':grouped:' .. level, unindex, 1) end
    if #ready_at > 0 then
      for i = 1, #ready_at, 2 * CHUNK do
        redis.call('ZADD', groups, 'XX', unpack(ready_at, i, math.min(#ready_at, i + 2 * CHUNK - 1)))
      end
    end
    if #gone > 0 then
      call_many('ZREM', groups, gone, 1)
      call_many('HDEL', turns, gone, 1)
    end
    for _, w in ipairs(waits) do redis.call('HSET', b .. ':waiters:' .. w[1], w[2], 1) end
    return members, helds
  end

  -- Claim for reserve on a queue with limits: by turns at a level with groups, else the level's
  -- due jobs in order, each spending the queue's own limit (`qkeys`). Jobs of `paused` tasks are
  -- parked first, at most park[1] of them (park[1] is left lowered). Returns as claim_turns.
  local function claim_limited(jobs, level, n, now, cache, qkeys, paused, park)
    local b = base_of(jobs)
    if redis.call('ZRANGE', b .. ':groups:' .. level, 0, 0)[1] then
      return claim_turns(jobs, level, n, now, cache, qkeys, paused, park)
    end
    local pk = pending_key(jobs, level)
    local members = redis.call('ZRANGEBYSCORE', pk, '-inf', fmt(now), 'LIMIT', 0, n)
    if paused then
      -- One by one past those taken (ranks 0 .. #taken - 1), parking the paused tasks' jobs.
      local taken = {}
      while #members > 0 and #taken < n do
        local stuck = false
        for _, m in ipairs(members) do
          local parked = park_paused(jobs, pk, m, paused, park, false)
          if parked == 'stuck' then
            stuck = true
            break
          elseif not parked then
            taken[#taken + 1] = m
          end
        end
        if stuck or #taken >= n then break end
        members = redis.call('ZRANGEBYSCORE', pk, '-inf', fmt(now), 'LIMIT', #taken, n - #taken)
      end
      members = taken
    end
    local helds = {}
    if #members > 0 then
      redis.call('ZREMRANGEBYRANK', pk, 0, #members - 1)
      for k = 1, #members do helds[k] = spend_keys(cache, qkeys, now, 1) end
    end
    return members, helds
  end
  lib = {grouped_list = grouped_list, write_grouped = write_grouped, parse_rule = parse_rule,
    key_state = key_state, save_states = save_states, rules_of = rules_of,
    group_rules = group_rules, prefetch = prefetch, bucket_tokens = bucket_tokens,
    next_token = next_token, allowance = allowance, spend_keys = spend_keys, unhold = unhold,
    free_held = free_held, free_slots = free_slots, close_group = close_group, queue_keys = queue_keys,
    park_paused = park_paused, claim_turns = claim_turns, claim_limited = claim_limited}
  limits_lib_made = lib
  return lib
end

-- Drop a job's idempotency key if the job still holds it.
local function free_key(keys, id, r)
  if r[R_KEY] and redis.call('HGET', keys, r[R_KEY]) == id then redis.call('HDEL', keys, r[R_KEY]) end
end
