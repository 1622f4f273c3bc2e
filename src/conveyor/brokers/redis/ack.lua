-- ack: apply a batch of outcomes of one queue's jobs, each only with its current fencing token.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:keys   KEYS[3] <base>:counts   KEYS[4] <base>:running
-- KEYS[5] <base>:dead   KEYS[6] <base>:done
-- KEYS[7..] per queue receiving follow-up enqueues: <qbase>:jobs, <qbase>:keys, <qbase>:counts
-- ARGV[1] now   ARGV[2] retention seconds
-- ARGV[3..] per outcome: id, token, kind (succeeded|retry|dead), result (optional string),
--   delay, error JSON, n effects, then per effect: argc, command, args...; n follow-ups, then
--   per follow-up: index of its queue's KEYS triple (1 = KEYS[7..9]) and 8 message fields.
-- Returns {status, detail, ...} per outcome: 'ok', 'lost' (not running with this token:
-- nothing changed) or 'effects_failed' with the error (the job stays running, its lease held).
-- Effects run before the job leaves running, so a failing effect leaves the job's state
-- alone; Redis does not undo effects of the same outcome that ran before the failing one.
-- Wakes waiters of the queue (retries) and of the follow-ups' queues.

local now = clock(ARGV[1])
local retention = tonumber(ARGV[2])
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

while i <= #ARGV do
  local id, token, kind = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local result, delay, err = opt_in(ARGV[i + 3]), tonumber(ARGV[i + 4]), ARGV[i + 5]
  local n_effects = tonumber(ARGV[i + 6])
  local effects_at = i + 7
  local j = effects_at
  for _ = 1, n_effects do j = j + tonumber(ARGV[j]) + 1 end
  local n_follow = tonumber(ARGV[j])
  local follow = {}
  for f = 1, n_follow do
    local at = j + 1 + (f - 1) * 9
    follow[f] = {t = tonumber(ARGV[at]), m = read_message(at + 1)}
  end
  i = j + 1 + n_follow * 9

  local r = load(jobs, id)
  if not r or r[R_STATE] ~= 'r' or r[R_TOKEN] ~= token then
    out[#out + 1] = 'lost'
    out[#out + 1] = ''
  else
    local level = r[R_PRIO]
    local failure = nil
    local targets = {}
    for _, f in ipairs(follow) do
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
    if not failure and n_effects > 0 then failure = effects_error(effects_at, n_effects) end
    if failure then
      out[#out + 1] = 'effects_failed'
      out[#out + 1] = failure
    else
      for _, tg in pairs(targets) do write_enqueue(tg.jobs, tg.keys, tg.counts, tg.msgs, tg.plan, now) end
      redis.call('ZREM', running, id)
      r[R_LEASE] = false
      bump(counts, 'r' .. level, -1)
      if kind == 'succeeded' then
        r[R_STATE] = 's'
        r[R_RESULT] = result
        r[R_FINISHED] = now
        redis.call('ZADD', done, fmt(now + retention), id)
        bump(counts, 's' .. level, 1)
      elseif kind == 'retry' then
        r[R_STATE] = 'p'
        r[R_RUN_AT] = now + delay
        r[R_WORKER] = false
        r[R_ERRORS] = append_error(r[R_ERRORS], err)
        redis.call('ZADD', pending_key(jobs, level), fmt(r[R_RUN_AT]), member(id, r))
        bump(counts, 'p' .. level, 1)
        woken = true
      else
        r[R_STATE] = 'd'
        r[R_FINISHED] = now
        r[R_ERRORS] = append_error(r[R_ERRORS], err)
        redis.call('ZADD', dead, fmt(now), id)
        bump(counts, 'd' .. level, 1)
      end
      save(jobs, id, r)
      out[#out + 1] = 'ok'
      out[#out + 1] = ''
    end
  end
end
if woken then wake(jobs) end
return out
