-- enqueue: store a batch of messages of one queue as scheduled or ready, deduplicating by key.
--
-- KEYS[1] <base>:jobs   KEYS[2] <base>:keys   KEYS[3] <base>:counts
-- ARGV[1] now ('' = the store's clock)
-- ARGV[2] '1' to only check the keys (write nothing), '0' to store
-- ARGV[3..] the messages, packed (see read_messages)
-- Returns {'ok', index, holder id, 0, ...} for the messages (1-based, in order) not created, those
-- an idempotency key resolved to another job (a created one always keeps its own id); or
-- {'conflict', key, holder id} having stored nothing when a key is held by a job with another
-- task or payload (also by an earlier message of the batch).
-- Wakes the queue's waiters when it stored a job.

local now = clock(ARGV[1])
local msgs = read_messages(3)
local plan, conflict = plan_enqueue(KEYS[1], KEYS[2], msgs)
if not plan then return {'conflict', conflict[1], conflict[2]} end
if ARGV[2] == '0' then write_enqueue(KEYS[1], KEYS[2], KEYS[3], msgs, plan, now) end
local out = {'ok'}
for i, p in ipairs(plan) do
  if type(p) == 'string' then
    out[#out + 1] = i
    out[#out + 1] = p
    out[#out + 1] = 0
  end
end
return out
