-- Helpers for corrupt records (see unpack_record in lib.lua), prepended by scripts.py after
-- lib.lua to the scripts that meet them in their indexes: reserve, reclaim, get, jobs, purge,
-- expire. Defines no keys.

-- The fields of a record that does not unpack, read one by one from its start until one does
-- not parse (a truncated record keeps its first fields); none is checked.
local function salvage(raw)
  local r, head = {}, string.byte(raw, 1)
  local at
  if head and head >= 0x90 and head <= 0x9f then
    at = 1
  elseif head == 0xdc then
    at = 3
  else
    return r
  end
  for i = 1, R_FIELDS do
    local ok, next_at, v = pcall(cmsgpack.unpack_one, raw, at)
    if not ok then break end
    r[i] = v
    if type(next_at) ~= 'number' or next_at < 0 then break end
    at = next_at
  end
  return r
end

-- A corrupt record is shown and buried as a job of this task, which no application registers;
-- base.CORRUPT_TASK (Python) is the same name.
local CORRUPT_TASK = 'conveyor:corrupt-record'

-- The error history of a corrupt record (JSON, as the worker writes errors).
local function corrupt_errors(why, now)
  return '[{"attempt":0,"type":"CorruptRecord","message":'
    .. cjson.encode('stored record does not parse (' .. why .. '); its bytes are kept as the payload')
    .. ',"traceback":null,"worker":null,"at":' .. fmt(now) .. '}]'
end

-- A corrupt record as 20 reply fields (see emit): task CORRUPT_TASK, its bytes as the payload,
-- a CorruptRecord error, `state` the letter of the index it was found in ('d' when unknown).
local function emit_corrupt(out, id, raw, why, state, now)
  local s = salvage(raw)
  local level = whole(s[R_PRIO], MAX_LEVEL) and s[R_PRIO] or 0
  local run_at = finite(s[R_RUN_AT]) and s[R_RUN_AT] or 0
  emit(out, id, {CORRUPT_TASK, level, raw, run_at, 0, 0, 0, 0, state, 0, false, false, false, false,
    false, false, corrupt_errors(why, now)})
end

-- The priority level of a corrupt record as far as its first bytes tell, or nil.
local function corrupt_level(raw)
  local level = salvage(raw)[R_PRIO]
  if whole(level, MAX_LEVEL) then return level end
  return nil
end

-- Bury a corrupt record in place: rewrite it as a dead job of CORRUPT_TASK at `level` (0 when
-- unknown) whose payload is its bytes and whose error says why, and put it in the dead index.
-- It is then an ordinary dead job (listed, purged, replayed: to be buried again as an unknown
-- task). The caller moves the counts. A key the record held stays in the keys hash, pointing
-- to this dead job: an enqueue with it is a KeyConflict until the job is purged.
local function bury_corrupt(jobs, dead, id, raw, why, level, seq, now)
  local s = salvage(raw)
  local token = whole(s[R_TOKEN], MAX_WHOLE) and s[R_TOKEN] or 0
  local r = record(CORRUPT_TASK, level or 0, raw, now, now, 1, token, seq or sequence(), false,
    corrupt_errors(why, now))
  r[R_STATE] = 'd'
  r[R_FINISHED] = now
  save(jobs, id, r)
  redis.call('ZADD', dead, fmt(now), id)
end

-- Set the counts of state letter `letter` to what the records of `ids` (an index's members)
-- say, level by level: after a corrupt record of unknown level left that index.
local function recount(jobs, counts, letter, ids)
  local per = {}
  local records = load_many(jobs, ids)
  for k = 1, #ids do
    local r = records[k]
    if r then per[r[R_PRIO]] = (per[r[R_PRIO]] or 0) + 1 end
  end
  for _, f in ipairs(redis.call('HKEYS', counts)) do
    if string.sub(f, 1, 1) == letter and not per[tonumber(string.sub(f, 2))] then redis.call('HDEL', counts, f) end
  end
  for level, n in pairs(per) do redis.call('HSET', counts, letter .. level, n) end
end

