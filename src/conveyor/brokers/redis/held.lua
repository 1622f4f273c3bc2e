-- held: whether a job of this queue holds one of the ids; a Redis Cluster's enqueue asks the
-- queues of every other slot before it stores (RedisBroker._refuse_ids_held_elsewhere), since
-- its enqueue script reads its own slot only.
--
-- KEYS[1] <base>:jobs
-- ARGV[1..] job ids
-- Returns the first of the ids with a record here, or '' when none has one.

for k, raw in ipairs(raw_many(KEYS[1], ARGV)) do
  if raw then return ARGV[k] end
end
return ''
