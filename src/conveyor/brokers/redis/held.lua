-- held: which of the ids a job of this queue holds; a Redis Cluster's enqueue (and ack, for
-- follow-up enqueues) asks the queues of every other slot first (see
-- RedisBroker._refuse_ids_held_elsewhere), since a script reads its own slot only.
--
-- KEYS[1] <base>:jobs
-- ARGV[1..] job ids
-- Returns the ids with a record here, in ARGV order (none: an empty list).

local out = {}
for k, raw in ipairs(raw_many(KEYS[1], ARGV)) do
  if raw then out[#out + 1] = ARGV[k] end
end
return out
