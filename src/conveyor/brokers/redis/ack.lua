-- ack: apply a batch of outcomes of one queue's jobs, each only with its current fencing token.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:keys   KEYS[3] <base>:counts   KEYS[4] <base>:running
-- KEYS[5] <base>:dead   KEYS[6] <base>:done
-- KEYS[7..] per queue receiving follow-up enqueues: <qbase>:jobs, <qbase>:keys, <qbase>:counts;
-- then, on a single server with follow-ups, <prefix>:queues: their new ids are looked up in every
-- registered queue (see held_elsewhere), as enqueue does
-- ARGV[1] now   ARGV[2] retention seconds
-- ARGV[3] the outcomes, one MessagePack array of [id, token, kind (succeeded|retry|dead|throttled|
--   cancelled|snoozed), result (optional string), delay, error JSON, effects (arrays of command
--   and arguments), follow-ups (per follow-up the index of its queue's KEYS triple, 1 =
--   KEYS[7..9]), and for snoozed the job's snooze cap]; a plain success (no result, effects or
--   follow-ups) travels as [id, token] alone
-- Job control (docs/job-control.md) keeps its fields in <base>:control (see request_cancel.lua),
-- named from KEYS[1] like the pending zsets: a retry, throttle or snooze of a run with a cancel
-- request ends the job cancelled; a snooze past its cap buries it with its error.
-- ARGV[4..] (if any follow-ups) their messages, in outcome order, packed (see read_messages).
-- Returns {status, detail, ...} per outcome: 'ok', 'lost' (not running with this token:
-- nothing changed) or 'effects_failed' with the error (the job stays running, its lease held).
-- Effects run before the job leaves running, so a failing effect leaves the job's state
-- alone; Redis does not undo effects of the same outcome that ran before the failing one.
-- An applied outcome frees the concurrency slots its job held (see free_held).
-- Wakes waiters of the queue (retries, freed slots) and of the follow-ups' queues.

local now = clock(ARGV[1])
local expires_s = fmt(now + tonumber(ARGV[2]))
local jobs, keys, counts, running, dead, done = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local registry = (#KEYS - 6) % 3 == 1 and KEYS[#KEYS] or nil
local out = {}
local woken = false

local function effects_error(effects)
  for _, command in ipairs(effects) do
    local ok, res = pcall(redis.call, unpack(command))
    if not ok then
      return (type(res) == 'table' and res.err) or tostring(res)
    end
  end
  return nil
end

-- First pass: read the outcomes; then load their records in one go. Outcomes are read as
-- unpacked, fields by index (below); follow-ups are paired with their messages.
local O_ID, O_TOKEN, O_KIND, O_RESULT, O_DELAY, O_ERR, O_EFFECTS, O_FOLLOW, O_CAP = 1, 2, 3, 4, 5, 6, 7, 8, 9
local control = base_of(jobs) .. ':control'
local controlled = redis.call('EXISTS', control) == 1
local NONE = {}
local entries, ids, follows = cmsgpack.unpack(ARGV[3]), {}, {}
local follow_msgs = ARGV[4] and read_messages(4) or NONE
local k = 0
for n, o in ipairs(entries) do
  ids[n] = o[O_ID]
  local targets = o[O_FOLLOW]
  if targets and #targets > 0 then
    local f = {}
    for j, target in ipairs(targets) do
      k = k + 1
      f[j] = {t = target, m = follow_msgs[k]}
    end
    follows[n] = f
  end
end
local records = load_many(jobs, ids)

-- Writes common to every outcome are gathered and sent once at the end.
local saves, unleased, finished, t, seen, freed = {}, {}, {}, {}, {}, {}
for n, o in ipairs(entries) do
  local r, id = records[n], o[O_ID]
  if seen[id] or not r or r[R_STATE] ~= 'r' or r[R_TOKEN] ~= o[O_TOKEN] then
    out[#out + 1] = 'lost'
    out[#out + 1] = ''
  else
    local level = r[R_PRIO]
    local failure = nil
    local targets = NONE
    if follows[n] then
      targets = {}
      for _, f in ipairs(follows[n]) do
        local tg = targets[f.t]
        if not tg then
          local k = 7 + (f.t - 1) * 3
          tg = {jobs = KEYS[k], keys = KEYS[k + 1], counts = KEYS[k + 2], msgs = {}}
          targets[f.t] = tg
        end
        tg.msgs[#tg.msgs + 1] = f.m
      end
    end
    local fresh = {}
    local refused = nil
    for _, tg in pairs(targets) do
      local plan, stores = plan_enqueue(tg.jobs, tg.keys, tg.msgs)
      if not plan then
        refused = stores
        break
      end
      tg.plan = plan
      fresh[tg.jobs] = stores
    end
    if not refused and registry and next(fresh) then refused = held_elsewhere(registry, fresh) end
    if refused then
      if refused[1] == 'key' then
        failure = 'KeyConflict: key ' .. refused[2] .. ' belongs to job ' .. refused[3]
          .. ' with a different task or payload'
      else
        failure = 'DuplicateId: job id ' .. refused[2] .. ' is held by another job'
      end
    end
    local effects = o[O_EFFECTS]
    if not failure and effects and #effects > 0 then failure = effects_error(effects) end
    if failure then
      out[#out + 1] = 'effects_failed'
      out[#out + 1] = failure
    else
      seen[id] = true
      for _, tg in pairs(targets) do write_enqueue(tg.jobs, tg.keys, tg.counts, tg.msgs, tg.plan, now) end
      unleased[#unleased + 1] = id
      r[R_LEASE] = false
      tally(t, 'r' .. level, -1)
      if r[R_HELD] then limits_lib().free_held(r, freed) end
      local kind = o[O_KIND] or 'succeeded'
      local snoozes = 0
      if controlled then
        if kind == 'retry' or kind == 'throttled' or kind == 'snoozed' then
          local mark = redis.call('HGET', control, id .. '\31c')
          if mark and tonumber(string.match(mark, '^(%S+)')) == r[R_TOKEN] then kind = 'cancelled' end
        end
        snoozes = tonumber(redis.call('HGET', control, id .. '\31s')) or 0
        redis.call('HDEL', control, id .. '\31c', id .. '\31s')
      end
      if kind == 'snoozed' and snoozes >= (tonumber(o[O_CAP]) or 0) then kind = 'dead' end
      if kind == 'succeeded' then
        r[R_STATE] = 's'
        r[R_RESULT] = o[O_RESULT] and opt_in(o[O_RESULT])
        r[R_FINISHED] = now
        finished[#finished + 1] = expires_s
        finished[#finished + 1] = id
        tally(t, 's' .. level, 1)
      elseif kind == 'retry' then
        r[R_STATE] = 'p'
        r[R_RUN_AT] = now + o[O_DELAY]
        r[R_WORKER] = false
        r[R_ERRORS] = append_error(r[R_ERRORS], o[O_ERR])
        to_pending(jobs, id, r)
        tally(t, 'p' .. level, 1)
        woken = true
      elseif kind == 'throttled' then
        -- RateLimited: the attempt is given back and every key of the job's group closes until
        -- it is due again.
        r[R_STATE] = 'p'
        r[R_RUN_AT] = now + o[O_DELAY]
        r[R_ATTEMPT] = r[R_ATTEMPT] - 1
        r[R_THROTTLED] = (tonumber(r[R_THROTTLED]) or 0) + 1
        r[R_WORKER] = false
        r[R_ERRORS] = append_error(r[R_ERRORS], o[O_ERR])
        limits_lib().close_group(jobs, r, r[R_RUN_AT])
        to_pending(jobs, id, r)
        tally(t, 'p' .. level, 1)
        woken = true
      elseif kind == 'snoozed' then
        -- Snooze: the attempt is given back, nothing recorded, no key closed; counted.
        r[R_STATE] = 'p'
        r[R_RUN_AT] = now + o[O_DELAY]
        r[R_ATTEMPT] = r[R_ATTEMPT] - 1
        r[R_WORKER] = false
        redis.call('HSET', control, id .. '\31s', snoozes + 1)
        to_pending(jobs, id, r)
        tally(t, 'p' .. level, 1)
        woken = true
      elseif kind == 'cancelled' then
        r[R_STATE] = 'c'
        r[R_FINISHED] = now
        if o[O_KIND] ~= 'snoozed' and o[O_ERR] and o[O_ERR] ~= '' and o[O_ERR] ~= 'null' then
          r[R_ERRORS] = append_error(r[R_ERRORS], o[O_ERR])
        end
        finished[#finished + 1] = expires_s
        finished[#finished + 1] = id
        tally(t, 'c' .. level, 1)
      else
        r[R_STATE] = 'd'
        r[R_FINISHED] = now
        r[R_ERRORS] = append_error(r[R_ERRORS], o[O_ERR])
        redis.call('ZADD', dead, fmt(now), id)
        tally(t, 'd' .. level, 1)
      end
      saves[#saves + 1] = id
      saves[#saves + 1] = pack_record(r)
      out[#out + 1] = 'ok'
      out[#out + 1] = ''
    end
  end
end
if #saves > 0 then
  call_many('HSET', jobs, saves, 2)
  call_many('ZREM', running, unleased, 1)
  if #finished > 0 then call_many('ZADD', done, finished, 2) end
  settle(counts, t)
end
if next(freed) and limits_lib().free_slots(jobs, freed) then woken = true end
if woken then wake(jobs) end
return out
