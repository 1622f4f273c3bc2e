-- request_cancel: cancel a job of this queue whatever its state (docs/job-control.md).
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:counts   KEYS[3] <base>:done   KEYS[4] <base>:control
-- ARGV[1] now   ARGV[2] retention seconds   ARGV[3] job id   ARGV[4] grace seconds
-- ARGV[5] the prefix of the workers' cancel channels ("<prefix>:cancel:"; the worker id follows)
-- Returns 'cancelled' (it was pending: it is cancelled now), 'cancelling' (it runs: its run is
-- marked, kept if marked already, and its worker woken), 'finished' or 'missing'.
-- <base>:control holds job control's fields: "<id>\31c" -> "<token> <grace>", a cancel request
-- for the run with that token (a later run has another token: nothing to clear), and
-- "<id>\31s" -> the job's snoozes. Absent for a job never cancelled while running nor snoozed.

local now = clock(ARGV[1])
local id = ARGV[3]
local r = load(KEYS[1], id)
if r == nil then return 'missing' end
if not r then return 'finished' end  -- corrupt: listed as dead
if r[R_STATE] == 'p' then
  local level = r[R_PRIO]
  if from_pending(KEYS[1], id, r) == 0 then
    redis.call('ZREM', parked_key(KEYS[1], r[R_TASK]), id)  -- set aside while its task is paused
  end
  r[R_STATE] = 'c'
  r[R_FINISHED] = now
  save(KEYS[1], id, r)
  redis.call('ZADD', KEYS[3], fmt(now + tonumber(ARGV[2])), id)
  bump(KEYS[2], 'p' .. level, -1)
  bump(KEYS[2], 'c' .. level, 1)
  redis.call('HDEL', KEYS[4], id .. '\31s')
  return 'cancelled'
end
if r[R_STATE] ~= 'r' then return 'finished' end
local field = id .. '\31c'
local mark = redis.call('HGET', KEYS[4], field)
if not mark or tonumber(string.match(mark, '^(%S+)')) ~= r[R_TOKEN] then
  redis.call('HSET', KEYS[4], field, tostring(r[R_TOKEN]) .. ' ' .. fmt(tonumber(ARGV[4])))
end
if type(r[R_WORKER]) == 'string' then redis.call('PUBLISH', ARGV[5] .. r[R_WORKER], '') end
return 'cancelling'
