-- The broker's statements, one per "-- name:" header (loaded by queries.py).
--
-- {schema} is the broker's schema (a quoted identifier). {now} is the caller's "now" when it
-- passed one (tests do) and the database's clock otherwise: the store decides due times and
-- lease expiry, so clock skew between workers cannot fire tasks early or steal live leases.
-- {statement_now} is the same but read when the statement arrives rather than when its
-- transaction began (now()): enqueue may run in a caller's long transaction, and a delay counts
-- from the enqueue.
-- Batches arrive as parallel arrays, unnested into one row per element. The arrays of the
-- per-task statements (enqueue, ack_succeeded, extend, release) travel in binary, %(name)b:
-- psycopg's text form quotes every element through a regular expression and escapes every
-- bytea, which cost enqueue 13 us of client CPU per message (binary arrays must not mix int
-- and float elements: the broker passes floats as floats).
-- Never write a percent sign outside a placeholder here: psycopg reads these as templates.

-- name: enqueue
-- Insert a batch of messages as pending jobs; a message whose (queue, key) or id is taken is not
-- inserted. Each message comes back in order with whether it was inserted, the holder of its
-- key, and whether its id was held and by this very message (the same enqueue sent again), as
-- this statement's snapshot sees them: rows inserted by this very statement are invisible to
-- it, so the caller resolves a key or an id repeated within the batch.
WITH m AS (
    SELECT *
      FROM unnest(%(ids)b::text[], %(tasks)b::text[], %(queues)b::text[], %(priorities)b::int[],
                  %(payloads)b::bytea[], %(delays)b::float8[], %(run_ats)b::float8[],
                  %(keys)b::text[], %(max_attempts)b::int[])
           WITH ORDINALITY AS m (id, task, queue, priority, payload, delay, run_at, key, max_attempts, n)
), inserted AS (
    INSERT INTO {schema}.jobs (id, task, queue, priority, state, payload, run_at, enqueued_at,
                               max_attempts, key)
    SELECT id, task, queue, priority, 'pending', payload, coalesce(run_at, {statement_now} + delay),
           {statement_now}, max_attempts, key
      FROM m
     ORDER BY n
        ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT inserted.id IS NOT NULL, holder.id, holder.task = m.task AND holder.payload = m.payload,
       same.id IS NOT NULL,
       coalesce(same.queue = m.queue AND same.task = m.task AND same.payload = m.payload
                AND same.priority = m.priority AND same.max_attempts = m.max_attempts
                AND same.key IS NOT DISTINCT FROM m.key, false)
  FROM m
  LEFT JOIN inserted ON inserted.id = m.id
  LEFT JOIN {schema}.jobs AS holder ON holder.queue = m.queue AND holder.key = m.key
  LEFT JOIN {schema}.jobs AS same ON same.id = m.id
 ORDER BY m.n;

-- name: lock_keys
-- Before a keyed insert: lock the batch's (queue, key) pairs, as transaction-scoped advisory
-- locks, in one global order. Concurrent batches then wait for each other's keys in that order;
-- left to the insert, each would wait on the unique index in its own batch order, and two
-- batches holding the same keys in different orders would deadlock.
SELECT count(pg_advisory_xact_lock(h))
  FROM (SELECT DISTINCT hashtextextended(%(scope)s || chr(31) || queue || chr(31) || key, 0) AS h
          FROM unnest(%(queues)s::text[], %(keys)s::text[]) AS k (queue, key)
         WHERE key IS NOT NULL
         ORDER BY h) AS hashed;

-- name: lock_queues
-- Before inserting into queues with a max_queued cap: one transaction-scoped advisory lock per
-- capped queue, in one global order (before any key lock), so the producers of a capped queue
-- insert and count in turn and no two both see room for its last places. Each statement of the
-- next producer sees what the last committed. Uncapped queues take no lock.
SELECT count(pg_advisory_xact_lock(h))
  FROM (SELECT DISTINCT hashtextextended(%(scope)s || chr(30) || queue, 0) AS h
          FROM unnest(%(queues)s::text[]) AS q (queue)
         ORDER BY h) AS hashed;

-- name: count_pending
-- Pending (ready or scheduled) jobs of each queue, in order, each counted up to its bound: one
-- range scan of the claim index each.
SELECT (SELECT count(*)
          FROM (SELECT 1 FROM {schema}.jobs
                 WHERE state = 'pending' AND queue = w.queue
                 LIMIT w.bound) AS capped)
  FROM unnest(%(queues)s::text[], %(bounds)s::int[]) WITH ORDINALITY AS w (queue, bound, n)
 ORDER BY w.n;

-- name: enqueue_unkeyed
-- The common case in one round trip: a batch without keys cannot conflict, so every message is
-- inserted, and the queues are woken by the same statement (delivered when it commits).
WITH inserted AS (
    INSERT INTO {schema}.jobs (id, task, queue, priority, state, payload, run_at, enqueued_at,
                               max_attempts)
    SELECT id, task, queue, priority, 'pending', payload, coalesce(run_at, {statement_now} + delay),
           {statement_now}, max_attempts
      FROM unnest(%(ids)b::text[], %(tasks)b::text[], %(queues)b::text[], %(priorities)b::int[],
                  %(payloads)b::bytea[], %(delays)b::float8[], %(run_ats)b::float8[],
                  %(max_attempts)b::int[])
           WITH ORDINALITY AS m (id, task, queue, priority, payload, delay, run_at, max_attempts, n)
     ORDER BY n
    RETURNING queue
)
SELECT count(pg_notify(%(channel)s, queue))
  FROM (SELECT DISTINCT queue FROM inserted ORDER BY queue) AS woken;

-- name: id_holders
-- The jobs holding ids: for ids taken by a transaction that committed after the enqueue
-- statement's snapshot.
SELECT id, queue, task, payload, priority, max_attempts, key
  FROM {schema}.jobs
 WHERE id = ANY(%(ids)s::text[]);

-- name: key_holders
-- The jobs holding (queue, key) pairs: for keys taken by a transaction that committed after
-- the enqueue statement's snapshot.
SELECT j.queue, j.key, j.id, j.task, j.payload
  FROM unnest(%(queues)s::text[], %(keys)s::text[]) AS k (queue, key)
  JOIN {schema}.jobs AS j ON j.queue = k.queue AND j.key = k.key;

-- name: notify
-- Wake the workers waiting on these queues; delivered when the transaction commits.
SELECT pg_notify(%(channel)s, queue) FROM unnest(%(queues)s::text[]) AS queue;

-- name: count_ready
-- Due jobs per (queue, priority), each count capped at the reservation's limit: one short index
-- range scan each, however long the backlog. (The reserve function runs this query for a
-- reservation from several queues.)
SELECT want.queue, want.priority,
       (SELECT count(*)
          FROM (SELECT 1 FROM {schema}.jobs
                 WHERE state = 'pending' AND queue = want.queue AND priority = want.priority
                   AND run_at <= {now}
                 LIMIT %(limit)s) AS capped)
  FROM unnest(%(queues)s::text[], %(priorities)s::int[]) AS want (queue, priority);

-- name: candidates
-- Lock up to the reservation's limit of due jobs per (queue, priority), oldest first: one short
-- index range scan each, however long the backlog. SKIP LOCKED passes jobs other claimers hold,
-- so the number locked is also the number this claimer can have. (The reserve function runs this
-- query for a reservation from one queue, then claims its share of them.)
SELECT w.queue, w.priority, c.id
  FROM unnest(%(queues)s::text[], %(priorities)s::int[]) AS w (queue, priority)
 CROSS JOIN LATERAL (
       SELECT id, run_at, seq FROM {schema}.jobs
        WHERE state = 'pending' AND queue = w.queue AND priority = w.priority
          AND run_at <= {now}
        ORDER BY run_at, seq
        LIMIT %(limit)s
          FOR UPDATE SKIP LOCKED) AS c;

-- name: reserve
-- The whole reservation in one round trip: the schema's reserve_unpaused function (migration
-- 0005) leaves out what is paused and calls its reserve function (migration 0004), which runs
-- candidates (one queue) or count_ready (several), the fair split across levels and queues and
-- the claim of its share; its last row is the worker's new fairness state.
SELECT * FROM {schema}.reserve_unpaused(%(queues)s::text[], %(weights)s::int[], %(fair)s::int[],
                                        %(qweights)s::int[], %(qfair)s::int[], %(strict)s::boolean,
                                        %(limit)s::int, %(lease)s::float8, %(worker)s::text,
                                        %(now)s::float8);

-- name: claim
-- Lease the n oldest due jobs of each (queue, priority) in one statement (the claim the reserve
-- function makes of its share, as a statement of its own: its plan is checked in the tests). SKIP LOCKED lets concurrent claimers pass each other; a row changed
-- since the snapshot is re-checked against the WHERE clause when locked, so a job is never
-- claimed twice.
WITH wanted AS (
    SELECT * FROM unnest(%(queues)s::text[], %(priorities)s::int[], %(counts)s::int[])
                  AS w (queue, priority, n)
), picked AS (
    SELECT job.id
      FROM wanted
     CROSS JOIN LATERAL (
           SELECT id FROM {schema}.jobs
            WHERE state = 'pending' AND queue = wanted.queue AND priority = wanted.priority
              AND run_at <= {now}
            ORDER BY run_at, seq
            LIMIT wanted.n
              FOR UPDATE SKIP LOCKED) AS job
)
UPDATE {schema}.jobs AS j
   SET state = 'running',
       attempt = CASE WHEN j.attempt < 2147483647 THEN j.attempt + 1 ELSE j.attempt END,
       token = CASE WHEN j.token < 9223372036854775807 THEN j.token + 1 ELSE 0 END,
       lease_until = {now} + %(lease)s, worker = %(worker)s, started_at = {now}
  FROM picked
 WHERE j.id = picked.id
RETURNING j.id, j.task, j.queue, j.priority, j.payload, j.attempt, j.max_attempts, j.token,
          j.run_at, j.enqueued_at, j.key;

-- name: next_due
-- Seconds from the database's clock to the earliest due time of a pending job of the queues
-- (zero or less: one is ready), or NULL. A skip scan: one index probe per (queue, priority)
-- present, however many jobs wait. A queue paused as a whole is left out: resume wakes it.
WITH RECURSIVE probe AS (
    SELECT q.queue, first.priority, first.run_at
      FROM unnest(%(queues)s::text[]) AS q (queue)
     CROSS JOIN LATERAL (
           SELECT priority, run_at FROM {schema}.jobs
            WHERE state = 'pending' AND queue = q.queue
            ORDER BY priority, run_at LIMIT 1) AS first
     WHERE NOT EXISTS (SELECT 1 FROM {schema}.paused AS p WHERE p.queue = q.queue AND p.task = '')
    UNION ALL
    SELECT probe.queue, next.priority, next.run_at
      FROM probe
     CROSS JOIN LATERAL (
           SELECT priority, run_at FROM {schema}.jobs
            WHERE state = 'pending' AND queue = probe.queue AND priority > probe.priority
            ORDER BY priority, run_at LIMIT 1) AS next
)
SELECT min(run_at) - extract(epoch from clock_timestamp()) FROM probe;

-- name: ack_succeeded
-- Outcomes "succeeded" of running jobs whose token still matches; returns the ids settled.
UPDATE {schema}.jobs AS j
   SET state = 'succeeded', result = o.result, finished_at = {now},
       expires_at = {now} + %(retention)s, lease_until = NULL
  FROM unnest(%(ids)b::text[], %(tokens)b::bigint[], %(results)b::bytea[]) AS o (id, token, result)
 WHERE j.id = o.id AND j.token = o.token AND j.state = 'running'
RETURNING j.id;

-- name: ack_retry
-- Outcomes "retry": pending again after the delay, the error appended to the history; wakes
-- the queues of the retried jobs in the same statement (delivered when it commits).
WITH retried AS (
    UPDATE {schema}.jobs AS j
       SET state = 'pending', run_at = {now} + o.delay, lease_until = NULL, worker = NULL,
           errors = j.errors || jsonb_build_array(o.error)
      FROM unnest(%(ids)s::text[], %(tokens)s::bigint[], %(delays)s::float8[], %(errors)s::jsonb[])
           AS o (id, token, delay, error)
     WHERE j.id = o.id AND j.token = o.token AND j.state = 'running'
    RETURNING j.id, j.queue
), woken AS (
    SELECT count(pg_notify(%(channel)s, queue)) AS n
      FROM (SELECT DISTINCT queue FROM retried ORDER BY queue) AS q
)
SELECT retried.id FROM retried, woken;

-- name: ack_dead
-- Outcomes "dead": into the dead letter queue, the error appended to the history.
UPDATE {schema}.jobs AS j
   SET state = 'dead', finished_at = {now}, lease_until = NULL,
       errors = j.errors || jsonb_build_array(o.error)
  FROM unnest(%(ids)s::text[], %(tokens)s::bigint[], %(errors)s::jsonb[]) AS o (id, token, error)
 WHERE j.id = o.id AND j.token = o.token AND j.state = 'running'
RETURNING j.id;

-- name: extend
-- Heartbeat: push the leases still held; returns their ids (the others are lost). A held row
-- that another transaction has locked (its acknowledgement, waiting on an effect's lock) is
-- passed, never waited for: it is reported held and extended next time if it still runs, and
-- reclaim passes locked rows too. The lock re-checks token and state against the row's latest
-- version, so a lease re-leased meanwhile is never extended.
WITH l AS (
    SELECT * FROM unnest(%(ids)b::text[], %(tokens)b::bigint[]) AS l (id, token)
), free AS (
    SELECT j.id FROM {schema}.jobs AS j JOIN l ON j.id = l.id AND j.token = l.token
     WHERE j.state = 'running'
       FOR UPDATE OF j SKIP LOCKED
), extended AS (
    UPDATE {schema}.jobs AS j SET lease_until = {now} + %(lease)s FROM free WHERE j.id = free.id
)
SELECT j.id FROM {schema}.jobs AS j JOIN l ON j.id = l.id AND j.token = l.token
 WHERE j.state = 'running';

-- name: release
-- Return leased, unstarted jobs to pending and give back their attempt.
UPDATE {schema}.jobs AS j
   SET state = 'pending', attempt = greatest(j.attempt, -2147483647) - 1, lease_until = NULL,
       worker = NULL, started_at = NULL
  FROM unnest(%(ids)b::text[], %(tokens)b::bigint[]) AS l (id, token)
 WHERE j.id = l.id AND j.token = l.token AND j.state = 'running'
RETURNING j.queue;

-- name: any_expired
-- Cheap probe of the running index before reclaim takes any lock.
SELECT 1 FROM {schema}.jobs WHERE state = 'running' AND lease_until < {now} LIMIT 1;

-- name: reclaim
-- Expired leases: pending again, or dead once their attempts are spent; either way the lost
-- attempt is recorded as a WorkerLost error. Leases being acknowledged right now are locked
-- and skipped: their owner is alive.
WITH expired AS (
    SELECT id FROM {schema}.jobs
     WHERE state = 'running' AND lease_until < {now}
       FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.jobs AS j
   SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'dead' ELSE 'pending' END,
       finished_at = CASE WHEN j.attempt >= j.max_attempts THEN {now} END,
       lease_until = NULL,
       errors = j.errors || jsonb_build_array(jsonb_build_object(
           'attempt', j.attempt,
           'type', 'WorkerLost',
           'message', 'worker lost: lease expired while running on ' || coalesce(j.worker, 'an unknown worker'),
           'traceback', NULL,
           'worker', j.worker,
           'at', {now}))
  FROM expired
 WHERE j.id = expired.id
RETURNING j.id, j.state, j.queue;

-- name: cancel
UPDATE {schema}.jobs
   SET state = 'cancelled', finished_at = {now}, expires_at = {now} + %(retention)s
 WHERE id = %(id)s AND state IN ('pending', 'parked');

-- name: get
SELECT {columns}, {now} FROM {schema}.jobs WHERE id = %(id)s;

-- name: stats
-- Counts per queue, priority and reported state, with the oldest ready due time. A parked job
-- (set aside while its task is paused) is pending.
WITH clock AS (SELECT {now} AS now)
SELECT queue, priority,
       CASE WHEN state NOT IN ('pending', 'parked') THEN state WHEN run_at <= clock.now THEN 'ready'
            ELSE 'scheduled' END
           AS reported,
       count(*),
       min(run_at) FILTER (WHERE state IN ('pending', 'parked') AND run_at <= clock.now),
       min(clock.now)
  FROM {schema}.jobs, clock
 WHERE %(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[])
 GROUP BY queue, priority, reported;

-- name: jobs
-- A page of jobs; {due} and {order} are fixed per listed state by the broker.
WITH clock AS (SELECT {now} AS now)
SELECT {columns}, clock.now
  FROM {schema}.jobs, clock
 WHERE (%(state)s::text IS NULL OR state = %(state)s::text)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
   AND (%(task)s::text IS NULL OR task = %(task)s::text)
   {due}
 ORDER BY {order}
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: beat
-- A worker's entry, listed until ttl seconds from the store's clock (the worker's own clock, in
-- its info, decides nothing); entries silent for an hour past their expiry are gone for good.
WITH beat AS (
    INSERT INTO {schema}.workers (id, info, expires)
    VALUES (%(id)s, %(info)s::jsonb, {now} + %(ttl)s::float8)
        ON CONFLICT (id) DO UPDATE SET info = excluded.info, expires = excluded.expires
)
DELETE FROM {schema}.workers WHERE expires < {now} - 3600 AND id <> %(id)s;

-- name: time
-- The store's clock now: the wall clock, not the start of a transaction.
SELECT extract(epoch from clock_timestamp())::float8;

-- name: workers
SELECT id, info::text FROM {schema}.workers WHERE expires >= {now} ORDER BY id;

-- name: replay_clash
-- A dead job whose key is held by another job of the queue it would be replayed into.
SELECT d.id, d.key, o.id
  FROM {schema}.jobs AS d
  JOIN {schema}.jobs AS o ON o.queue = %(queue)s AND o.key = d.key AND o.id <> d.id
 WHERE d.state = 'dead' AND d.key IS NOT NULL AND d.queue <> %(queue)s
   AND (%(ids)s::text[] IS NULL OR d.id = ANY(%(ids)s::text[]))
 LIMIT 1;

-- name: replay
-- Dead jobs ready again with their attempts reset (their error history kept).
UPDATE {schema}.jobs
   SET state = 'pending', attempt = 0, run_at = {now}, finished_at = NULL, started_at = NULL,
       worker = NULL, queue = coalesce(%(queue)s, queue)
 WHERE state = 'dead' AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
RETURNING queue;

-- name: purge
DELETE FROM {schema}.jobs
 WHERE state = 'dead' AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]));

-- name: expire
-- Finished jobs past their retention, at most a batch at a time so the purge never holds
-- many row locks at once.
DELETE FROM {schema}.jobs
 WHERE id IN (SELECT id FROM {schema}.jobs
               WHERE expires_at <= {now}
               LIMIT %(limit)s
                 FOR UPDATE SKIP LOCKED);

-- name: pause
-- Store a pause (task '' for the whole queue); a second one keeps the first one's time.
INSERT INTO {schema}.paused (queue, task, since) VALUES (%(queue)s, %(task)s, {now})
    ON CONFLICT (queue, task) DO NOTHING;

-- name: pause_barrier
-- After storing a pause, in its transaction: wait for the reservations from the queue that read
-- the pauses before it was stored (each holds this lock shared, see reserve_unpaused); later
-- ones wait for the commit, then read it.
SELECT pg_advisory_xact_lock(hashtextextended('conveyor.pause' || chr(31) || %(schema)s || chr(31) || %(queue)s, 0));

-- name: resume
-- Undo a pause; a task's parked jobs are pending again and the queue's workers are woken.
WITH gone AS (
    DELETE FROM {schema}.paused WHERE queue = %(queue)s AND task = %(task)s
), unparked AS (
    UPDATE {schema}.jobs SET state = 'pending'
     WHERE state = 'parked' AND queue = %(queue)s AND task = %(task)s
)
SELECT pg_notify(%(channel)s, %(queue)s);

-- name: paused
SELECT queue, task, since FROM {schema}.paused
 WHERE %(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]);
