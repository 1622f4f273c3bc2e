-- enqueue: store a batch of messages of one or more queues as scheduled or ready, deduplicating
-- by key, all or nothing: every key is checked before anything is written.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:keys   KEYS[3] <base>:counts of the first queue, and so
-- on: KEYS[3q-2], KEYS[3q-1], KEYS[3q] of queue q of the batch (on a Cluster, all in one slot);
-- on a single server a last key, <prefix>:queues (the registry of queues): the ids to store are
-- then looked up in every registered queue, which a single server lets a script read.
-- ARGV[1] now ('' = the store's clock)
-- ARGV[2..] per queue in KEYS order, its messages packed (see read_messages): the packed fields,
-- then one argument per payload; then, only when the call caps a queue (max_queued), one
-- argument per queue in KEYS order: its cap of pending jobs, or '' for none.
-- Returns {'ok', q, index, holder id, ...} for the messages (1-based queue and index within its
-- queue) not created, those an idempotency key resolved to another job (a created one always
-- keeps its own id); or {'conflict', key, holder id} having stored nothing when a key is held
-- by a job with another task or payload (also by an earlier message of the batch); or
-- {'duplicate', id} having stored nothing when a message's id is held by another job (of any
-- queue checked, or another message of the batch for its queue); the same message again is no
-- other job (see plan_enqueue). The broker refuses one id in the messages of two queues. Or
-- {'full', q, pending, cap, adding} having stored nothing when the batch's new jobs would take
-- queue q's pending (ready and scheduled) jobs, read from its counts hash, past its cap.
-- Wakes the waiters of each queue where it stored a job.

local now = clock(ARGV[1])
local queues, at, fresh = {}, 2, {}
local function refusal(r)
  if r[1] == 'key' then return {'conflict', r[2], r[3]} end
  return {'duplicate', r[2]}
end
for q = 1, math.floor(#KEYS / 3) do
  local msgs = read_messages(at)
  at = at + 1 + #msgs
  local jobs, keys = KEYS[3 * q - 2], KEYS[3 * q - 1]
  local plan, stores = plan_enqueue(jobs, keys, msgs)
  if not plan then return refusal(stores) end
  queues[q] = {msgs, plan}
  fresh[jobs] = stores
end
if #KEYS % 3 == 1 then
  local refused = held_elsewhere(KEYS[#KEYS], fresh)
  if refused then return refusal(refused) end
end
if at <= #ARGV then
  for q = 1, math.floor(#KEYS / 3) do
    local cap, adding = tonumber(ARGV[at + q - 1]), 0
    if cap then
      for _, p in ipairs(queues[q][2]) do
        if p == true then adding = adding + 1 end
      end
    end
    if adding > 0 then
      local counts, pending = redis.call('HGETALL', KEYS[3 * q]), 0
      for i = 1, #counts, 2 do
        if string.sub(counts[i], 1, 1) == 'p' then pending = pending + tonumber(counts[i + 1]) end
      end
      if pending + adding > cap then return {'full', q, pending, cap, adding} end
    end
  end
end
local out = {'ok'}
for q, qp in ipairs(queues) do
  write_enqueue(KEYS[3 * q - 2], KEYS[3 * q - 1], KEYS[3 * q], qp[1], qp[2], now)
  for i, p in ipairs(qp[2]) do
    if type(p) == 'string' then
      out[#out + 1] = q
      out[#out + 1] = i
      out[#out + 1] = p
    end
  end
end
return out
