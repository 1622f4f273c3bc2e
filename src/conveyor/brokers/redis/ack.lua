-- ack: apply a batch of outcomes of one queue's jobs, each only with its current fencing token.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:keys   KEYS[3] <base>:counts   KEYS[4] <base>:running
-- KEYS[5] <base>:dead   KEYS[6] <base>:done
-- KEYS[7..] per queue receiving follow-up enqueues: <qbase>:jobs, <qbase>:keys, <qbase>:counts
-- ARGV[1] now   ARGV[2] retention seconds
-- ARGV[3..] per outcome: id, token, kind (succeeded|retry|dead), result (optional string),
--   delay, error JSON, n effects, then per effect: argc, command, args...; n follow-ups, then
--   per follow-up the index of its queue's KEYS triple (1 = KEYS[7..9]), then (if any) the
--   follow-up messages packed (see read_messages: one argument, then one per payload).
-- Returns {status, detail, ...} per outcome: 'ok', 'lost' (not running with this token:
-- nothing changed) or 'effects_failed' with the error (the job stays running, its lease held).
-- Effects run before the job leaves running, so a failing effect leaves the job's state
-- alone; Redis does not undo effects of the same outcome that ran before the failing one.
-- Wakes waiters of the queue (retries) and of the follow-ups' queues.

local now = clock(ARGV[1])
local expires_s = fmt(now + tonumber(ARGV[2]))
local jobs, keys, counts, running, dead, done = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local out = {}
local woken = false
local i = 3

local function effects_error(first, n)
  local j = first
  for _ = 1, n do
    local argc = tonumber(ARGV[j])
    local ok, res = pcall(redis.call, unpack(ARGV, j + 1, j + argc))
    if not ok then
      return (type(res) == 'table' and res.err) or tostring(res), nil
    end
    j = j + argc + 1
  end
  return nil, j
end

-- First pass: parse the outcomes; then load their records in one go.
local entries, ids = {}, {}
while i <= #ARGV do
  local e = {
    id = ARGV[i], token = tonumber(ARGV[i + 1]), kind = ARGV[i + 2], result = opt_in(ARGV[i + 3]),
    delay = tonumber(ARGV[i + 4]), err = ARGV[i + 5], n_effects = tonumber(ARGV[i + 6]),
    effects_at = i + 7, follow = {},
  }
  local j = e.effects_at
  for _ = 1, e.n_effects do j = j + tonumber(ARGV[j]) + 1 end
  local n_follow = tonumber(ARGV[j])
  if n_follow > 0 then
    for f, m in ipairs(read_messages(j + 1 + n_follow)) do
      e.follow[f] = {t = tonumber(ARGV[j + f]), m = m}
    end
    i = j + 2 + 2 * n_follow
  else
    i = j + 1
  end
  entries[#entries + 1] = e
  ids[#ids + 1] = e.id
end
local records = load_many(jobs, ids)

-- Writes common to every outcome are gathered and sent once at the end.
local saves, unleased, finished, t, seen = {}, {}, {}, {}, {}
for n, e in ipairs(entries) do
  local r = records[n]
  if seen[e.id] or not r or r[R_STATE] ~= 'r' or r[R_TOKEN] ~= e.token then
    out[#out + 1] = 'lost'
    out[#out + 1] = ''
  else
    local level = r[R_PRIO]
    local failure = nil
    local targets = {}
    for _, f in ipairs(e.follow) do
      local tg = targets[f.t]
      if not tg then
        local k = 7 + (f.t - 1) * 3
        tg = {jobs = KEYS[k], keys = KEYS[k + 1], counts = KEYS[k + 2], msgs = {}}
        targets[f.t] = tg
      end
      tg.msgs[#tg.msgs + 1] = f.m
    end
    for _, tg in pairs(targets) do
      local plan, conflict = plan_enqueue(tg.jobs, tg.keys, tg.msgs)
      if not plan then
        failure = 'KeyConflict: key ' .. conflict[1] .. ' belongs to job ' .. conflict[2]
          .. ' with a different task or payload'
        break
      end
      tg.plan = plan
    end
    if not failure and e.n_effects > 0 then failure = effects_error(e.effects_at, e.n_effects) end
    if failure then
      out[#out + 1] = 'effects_failed'
      out[#out + 1] = failure
    else
      seen[e.id] = true
      for _, tg in pairs(targets) do write_enqueue(tg.jobs, tg.keys, tg.counts, tg.msgs, tg.plan, now) end
      unleased[#unleased + 1] = e.id
      r[R_LEASE] = false
      tally(t, 'r' .. level, -1)
      if e.kind == 'succeeded' then
        r[R_STATE] = 's'
        r[R_RESULT] = e.result
        r[R_FINISHED] = now
        finished[#finished + 1] = expires_s
        finished[#finished + 1] = e.id
        tally(t, 's' .. level, 1)
      elseif e.kind == 'retry' then
        r[R_STATE] = 'p'
        r[R_RUN_AT] = now + e.delay
        r[R_WORKER] = false
        r[R_ERRORS] = append_error(r[R_ERRORS], e.err)
        redis.call('ZADD', pending_key(jobs, level), fmt(r[R_RUN_AT]), member(e.id, r[R_SEQ]))
        tally(t, 'p' .. level, 1)
        woken = true
      else
        r[R_STATE] = 'd'
        r[R_FINISHED] = now
        r[R_ERRORS] = append_error(r[R_ERRORS], e.err)
        redis.call('ZADD', dead, fmt(now), e.id)
        tally(t, 'd' .. level, 1)
      end
      saves[#saves + 1] = e.id
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
if woken then wake(jobs) end
return out
