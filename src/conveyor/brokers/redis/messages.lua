-- Helpers for storing messages, prepended by scripts.py after lib.lua to the scripts that
-- enqueue: enqueue (and ack, for follow-up enqueues). Defines no keys.

-- Messages from ARGV[at] (wire.packed_messages): a MessagePack array of [shapes, runs, ids,
-- keys], then their payloads in ARGV[at + 1], ARGV[at + 2], ... A shape holds what messages
-- of a batch mostly share: [task, priority, delay, run_at (nil for none), max_attempts]; runs
-- are [count, shape index] pairs in message order; keys maps a message's index to its
-- idempotency key (nil when no message has one). A batch with limits adds two more: its distinct
-- rule sets (each an array of [key, rate, burst, concurrency]) and a map of a message's index to
-- its rule set's. A batch with headers adds a seventh: a map of a message's index to its headers
-- (JSON text); the fifth and sixth are then nil when it has no limits. Each message is read as
-- {id, shape, payload, key or false, rules or nil, headers or nil}: a batch costs one table per
-- message, not one per field.
local M_ID, M_SHAPE, M_PAYLOAD, M_KEY, M_RULES, M_HEADERS = 1, 2, 3, 4, 5, 6
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
  if packed[6] then
    local sets = packed[5]
    for index, set in pairs(packed[6]) do msgs[index][M_RULES] = sets[set] end
  end
  if packed[7] then
    for index, h in pairs(packed[7]) do msgs[index][M_HEADERS] = h end
  end
  return msgs
end

-- Whether message `m` is what stored record `r` holds: the same enqueue sent again.
local function same_message(r, m)
  local shape = m[M_SHAPE]
  return r[R_TASK] == shape[S_TASK] and r[R_PAYLOAD] == m[M_PAYLOAD] and r[R_PRIO] == shape[S_PRIO]
    and r[R_MAX] == shape[S_MAX] and (r[R_KEY] or false) == m[M_KEY]
end

-- Whether messages `a` and `b` are the same (their due times aside).
local function same_messages(a, b)
  local sa, sb = a[M_SHAPE], b[M_SHAPE]
  return sa[S_TASK] == sb[S_TASK] and a[M_PAYLOAD] == b[M_PAYLOAD] and sa[S_PRIO] == sb[S_PRIO]
    and sa[S_MAX] == sb[S_MAX] and a[M_KEY] == b[M_KEY]
end

-- Decide, writing nothing, which messages are new: returns a plan and the ids it stores, or
-- nil and the refusal: {'key', key, holder id} or {'id', id}. A plan holds per message true
-- (store it), false (its id holds this very message, stored by an earlier send of the same
-- call whose reply was lost, or earlier in the batch: nothing is stored, it counts as created)
-- or the id of the job its idempotency key resolved to (not created). The key is looked at
-- first: a key held by a job with the same task and payload returns that job, whatever the
-- message's id. Otherwise an id held by another job of the queue, or by another message of the
-- batch for the queue, is refused. (One id in the messages of two queues is refused by the
-- broker before it calls.)
local function plan_enqueue(jobs, keys, msgs)
  local plan, held, ids, taken, fresh = {}, {}, {}, {}, {}
  for i, m in ipairs(msgs) do ids[i] = m[M_ID] end
  local stored = raw_many(jobs, ids)
  for i, m in ipairs(msgs) do
    local id, key = m[M_ID], m[M_KEY]
    local h = key and held[key]
    if key and not h then
      local hid = redis.call('HGET', keys, key)
      if hid then
        local r = load(jobs, hid)
        if r then
          h = {hid, r[R_TASK], r[R_PAYLOAD]}
        elseif r == false then
          return nil, {'key', key, hid} -- a corrupt holder cannot be compared: refused
        end
      end
    end
    if h then
      if h[2] ~= m[M_SHAPE][S_TASK] or h[3] ~= m[M_PAYLOAD] then return nil, {'key', key, h[1]} end
      plan[i] = h[1]
    elseif stored[i] then
      local r = unpack_record(stored[i])
      if not r or not same_message(r, m) then return nil, {'id', id} end
      plan[i] = false
    elseif taken[id] then
      if not same_messages(taken[id], m) then return nil, {'id', id} end
      plan[i] = false
    else
      plan[i] = true
      taken[id] = m
      fresh[#fresh + 1] = id
      if key then held[key] = {id, m[M_SHAPE][S_TASK], m[M_PAYLOAD]} end
    end
  end
  return plan, fresh
end

-- Refuse, as {'id', id}, the first id to store held by a job of another queue named in
-- `registry` (the set of queues; its key is "<prefix>:queues"); nil when none. `fresh` maps
-- the jobs key of each queue of the call to the ids it stores (see plan_enqueue). Reads keys
-- not passed in KEYS: only on a single server, where every queue is at hand. Costs one HMGET
-- of the call's new ids per other registered queue.
local function held_elsewhere(registry, fresh)
  local prefix = string.sub(registry, 1, -8)
  for _, q in ipairs(redis.call('SMEMBERS', registry)) do
    local jobs = prefix .. ':{' .. q .. '}:jobs'
    local ids = {}
    for other, its in pairs(fresh) do
      if other ~= jobs then
        for _, id in ipairs(its) do ids[#ids + 1] = id end
      end
    end
    for i = 1, #ids, CHUNK do
      local last = math.min(#ids, i + CHUNK - 1)
      for k, raw in ipairs(redis.call('HMGET', jobs, unpack(ids, i, last))) do
        if raw then return {'id', ids[i + k - 1]} end
      end
    end
  end
  return nil
end

-- Store the messages a plan marks true. A record is built as MessagePack by concatenation
-- (the bytes pack_record would give, its enqueue time and sequence made relative), from parts
-- packed once per shape: tables and a general pack per message cost a third of the script.
local function write_enqueue(jobs, keys, counts, msgs, plan, now)
  local seq = sequence()
  local base = math.floor(now * 1000000)
  local now_s, now_p = fmt(now), cmsgpack.pack(now)
  local records, pending, key_ids, parts, t, grouped = {}, {}, {}, {}, {}, {}
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
      local grp = m[M_RULES] and group_name(m[M_RULES])
      if grp then
        -- 18 fields (array16 header): the key or false, six absent ones, then the group.
        rec = '\220\0\18' .. string.sub(rec, 2) .. (key and '' or '\194') .. '\194\194\194\194\194\194'
          .. cmsgpack.pack(grp)
      end
      if m[M_HEADERS] then
        -- Headers go last (R_HEADERS): the record as built, its absent fields filled, repacked.
        local r = cmsgpack.unpack(rec)
        for f = 1, R_HEADERS - 1 do
          if r[f] == nil then r[f] = false end
        end
        r[R_HEADERS] = m[M_HEADERS]
        rec = cmsgpack.pack(r)
      end
      records[#records + 1] = id
      records[#records + 1] = rec
      local level = shape[S_PRIO]
      local zs = grp and limits_lib().grouped_list(grouped, level, grp, m[M_RULES]) or pending[level]
      if not zs then
        zs = {}
        pending[level] = zs
      end
      zs[#zs + 1] = (due == now and now_s) or fmt(due)
      zs[#zs + 1] = member(id, s)
      if grp and not (zs.first and zs.first <= due) then zs.first = due end
    end
  end
  if #records == 0 then return end
  call_many('HSET', jobs, records, 2)
  for level, zs in pairs(pending) do
    call_many('ZADD', pending_key(jobs, level), zs, 2)
    tally(t, 'p' .. level, #zs / 2)
  end
  if next(grouped) then limits_lib().write_grouped(jobs, grouped, t) end
  if #key_ids > 0 then call_many('HSET', keys, key_ids, 2) end
  settle(counts, t)
  wake(jobs)
end

