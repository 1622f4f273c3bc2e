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
-- it, so the caller resolves a key or an id repeated within the batch. A job with limits joins
-- its group (docs/flow-control.md): the group's row takes the batch's latest rules and is ready
-- no later than the job is due.
WITH m AS (
    SELECT *
      FROM unnest(%(ids)b::text[], %(tasks)b::text[], %(queues)b::text[], %(priorities)b::int[],
                  %(payloads)b::bytea[], %(delays)b::float8[], %(run_ats)b::float8[],
                  %(keys)b::text[], %(max_attempts)b::int[], %(grps)b::text[], %(rules)b::text[],
                  %(headers)b::text[])
           WITH ORDINALITY AS m (id, task, queue, priority, payload, delay, run_at, key, max_attempts,
                                 grp, rules, headers, n)
), inserted AS (
    INSERT INTO {schema}.jobs (id, task, queue, priority, state, payload, run_at, enqueued_at,
                               max_attempts, key, grp, rules, headers)
    SELECT id, task, queue, priority, 'pending', payload, coalesce(run_at, {statement_now} + delay),
           {statement_now}, max_attempts, key, grp, rules::jsonb, headers::jsonb
      FROM m
     ORDER BY n
        ON CONFLICT DO NOTHING
    RETURNING id, run_at
), grouped AS (
    INSERT INTO {schema}.limit_groups AS g (queue, priority, grp, rules, turn, ready_at)
    SELECT m.queue, m.priority, m.grp, (array_agg(m.rules::jsonb ORDER BY m.n DESC))[1], 0,
           min(inserted.run_at)
      FROM m JOIN inserted ON inserted.id = m.id
     WHERE m.grp IS NOT NULL
     GROUP BY m.queue, m.priority, m.grp
     ORDER BY m.queue, m.priority, m.grp
        ON CONFLICT (queue, priority, grp)
        DO UPDATE SET rules = excluded.rules, ready_at = least(g.ready_at, excluded.ready_at)
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

-- name: enqueue_grouped
-- enqueue_unkeyed for a batch without keys in which some messages have limits: in the same one
-- statement, the jobs with limits join their groups as in enqueue (the group's row takes the
-- batch's latest rules and is ready no later than the job is due). An id taken fails the whole
-- statement, storing nothing: the broker then takes the enqueue statement.
WITH m AS (
    SELECT *
      FROM unnest(%(ids)b::text[], %(tasks)b::text[], %(queues)b::text[], %(priorities)b::int[],
                  %(payloads)b::bytea[], %(delays)b::float8[], %(run_ats)b::float8[],
                  %(max_attempts)b::int[], %(grps)b::text[], %(rules)b::text[])
           WITH ORDINALITY AS m (id, task, queue, priority, payload, delay, run_at, max_attempts, grp,
                                 rules, n)
), inserted AS (
    INSERT INTO {schema}.jobs (id, task, queue, priority, state, payload, run_at, enqueued_at,
                               max_attempts, grp, rules)
    SELECT id, task, queue, priority, 'pending', payload, coalesce(run_at, {statement_now} + delay),
           {statement_now}, max_attempts, grp, rules::jsonb
      FROM m
     ORDER BY n
    RETURNING id, queue, run_at
), grouped AS (
    INSERT INTO {schema}.limit_groups AS g (queue, priority, grp, rules, turn, ready_at)
    SELECT m.queue, m.priority, m.grp, (array_agg(m.rules::jsonb ORDER BY m.n DESC))[1], 0,
           min(inserted.run_at)
      FROM m JOIN inserted ON inserted.id = m.id
     WHERE m.grp IS NOT NULL
     GROUP BY m.queue, m.priority, m.grp
     ORDER BY m.queue, m.priority, m.grp
        ON CONFLICT (queue, priority, grp)
        DO UPDATE SET rules = excluded.rules, ready_at = least(g.ready_at, excluded.ready_at)
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
                 WHERE state = 'pending' AND grp IS NULL AND queue = want.queue AND priority = want.priority
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
        WHERE state = 'pending' AND grp IS NULL AND queue = w.queue AND priority = w.priority
          AND run_at <= {now}
        ORDER BY run_at, seq
        LIMIT %(limit)s
          FOR UPDATE SKIP LOCKED) AS c;

-- name: reserve
-- The whole reservation in one round trip: the schema's reserve_unpaused function (migration
-- 0006) leaves out what is paused and calls its reserve function, which runs candidates (one
-- queue) or count_ready (several), the fair split across levels and queues and the claim of its
-- share (reserve_limited for queues with limits); its last row is the worker's new fairness state.
-- Each job's headers are read by id, one primary-key probe per row (a subquery, not a join: a
-- join may be planned as a scan of the jobs table); the function's rows keep their order.
SELECT r.*, (SELECT j.headers FROM {schema}.jobs AS j WHERE j.id = r.r_id)
  FROM {schema}.reserve_unpaused(%(queues)s::text[], %(weights)s::int[], %(fair)s::int[],
                                 %(qweights)s::int[], %(qfair)s::int[], %(strict)s::boolean,
                                 %(limit)s::int, %(lease)s::float8, %(worker)s::text,
                                 %(now)s::float8) AS r;

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
            WHERE state = 'pending' AND grp IS NULL AND queue = wanted.queue AND priority = wanted.priority
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
-- Seconds from the database's clock to when work of the queues may be ready (zero or less: some
-- is), or NULL: the earliest due time of a pending job without limits (a skip scan: one index
-- probe per (queue, priority) present, however many jobs wait), or the earliest a group of
-- jobs with limits may run (ready_at; +infinity while it waits for a slot, which wakes it);
-- a queue its own limit holds back is ready no earlier than that limit allows. A queue paused
-- as a whole is left out: resume wakes it.
WITH RECURSIVE probe AS (
    SELECT q.queue, first.priority, first.run_at
      FROM unnest(%(queues)s::text[]) AS q (queue)
     CROSS JOIN LATERAL (
           SELECT priority, run_at FROM {schema}.jobs
            WHERE state = 'pending' AND grp IS NULL AND queue = q.queue
            ORDER BY priority, run_at LIMIT 1) AS first
     WHERE NOT EXISTS (SELECT 1 FROM {schema}.paused AS p WHERE p.queue = q.queue AND p.task = '')
    UNION ALL
    SELECT probe.queue, next.priority, next.run_at
      FROM probe
     CROSS JOIN LATERAL (
           SELECT priority, run_at FROM {schema}.jobs
            WHERE state = 'pending' AND grp IS NULL AND queue = probe.queue
              AND priority > probe.priority
            ORDER BY priority, run_at LIMIT 1) AS next
), clock AS (
    SELECT extract(epoch from clock_timestamp()) AS now
), due AS (
    SELECT queue, run_at AS at FROM probe
    UNION ALL
    SELECT g.queue, g.ready_at FROM {schema}.limit_groups AS g
     WHERE g.queue = ANY (%(queues)s::text[]) AND g.grp <> ''
       AND NOT EXISTS (SELECT 1 FROM {schema}.paused AS p WHERE p.queue = g.queue AND p.task = '')
), gate AS (
    SELECT k.queue,
           greatest(CASE WHEN k.closed_until > clock.now THEN k.closed_until END,
                    CASE WHEN coalesce(k.concurrency, 0) > 0 AND k.running >= k.concurrency
                         THEN 'infinity'::float8 END,
                    CASE WHEN coalesce(k.rate, 0) > 0
                          AND floor(coalesce(k.burst, 1) - greatest(0, k.tat - clock.now) * k.rate + 1e-9) < 1
                         THEN k.tat - (coalesce(k.burst, 1) - 1) / k.rate END) AS at
      FROM {schema}.limit_keys AS k, clock
     WHERE k.queue = ANY (%(queues)s::text[]) AND k.key = ''
       AND (k.rate IS NOT NULL OR k.concurrency IS NOT NULL)
)
SELECT min(greatest(due.at, gate.at)) - min(clock.now)
  FROM due LEFT JOIN gate ON gate.queue = due.queue, clock;

-- name: ack_succeeded
-- Outcomes "succeeded" of running jobs whose token still matches; returns the ids settled.
-- Slots the jobs held are freed (after_settle: called only if one held any).
WITH settled AS (
    UPDATE {schema}.jobs AS j
       SET state = 'succeeded', result = o.result, finished_at = {now},
           expires_at = {now} + %(retention)s, lease_until = NULL
      FROM unnest(%(ids)b::text[], %(tokens)b::bigint[], %(results)b::bytea[]) AS o (id, token, result)
     WHERE j.id = o.id AND j.token = o.token AND j.state = 'running'
    RETURNING j.id, j.queue, j.held
), limited AS (
    SELECT {schema}.after_settle(array_agg(queue), NULL, NULL, NULL, array_agg(held), NULL, NULL,
                                 NULL, {now}, %(channel)s)
      FROM settled WHERE held IS NOT NULL HAVING count(*) > 0
)
SELECT settled.id FROM settled, (SELECT count(*) FROM limited) AS l;

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
    RETURNING j.id, j.queue, j.priority, j.grp, j.rules, j.held, j.run_at
), woken AS (
    SELECT count(pg_notify(%(channel)s, queue)) AS n
      FROM (SELECT DISTINCT queue FROM retried ORDER BY queue) AS q
), limited AS (
    SELECT {schema}.after_settle(array_agg(queue), array_agg(priority), array_agg(grp),
                                 array_agg(rules), array_agg(held), array_agg(grp IS NOT NULL),
                                 array_agg(run_at), NULL, {now}, %(channel)s)
      FROM retried WHERE held IS NOT NULL OR grp IS NOT NULL HAVING count(*) > 0
)
SELECT retried.id FROM retried, woken, (SELECT count(*) FROM limited) AS l;

-- name: ack_throttled
-- Outcomes "throttled" (RateLimited): pending again after the delay with the attempt given back
-- and counted as a throttle, the error appended; every key of the job's group is closed until
-- then (after_settle, which also frees its slots and puts it back in its group).
WITH throttled AS (
    UPDATE {schema}.jobs AS j
       SET state = 'pending', run_at = {now} + o.delay, lease_until = NULL, worker = NULL,
           attempt = greatest(j.attempt - 1, 0), throttled = coalesce(j.throttled, 0) + 1,
           errors = j.errors || jsonb_build_array(o.error)
      FROM unnest(%(ids)s::text[], %(tokens)s::bigint[], %(delays)s::float8[], %(errors)s::jsonb[])
           AS o (id, token, delay, error)
     WHERE j.id = o.id AND j.token = o.token AND j.state = 'running'
    RETURNING j.id, j.queue, j.priority, j.grp, j.rules, j.held, j.run_at
), woken AS (
    SELECT count(pg_notify(%(channel)s, queue)) AS n
      FROM (SELECT DISTINCT queue FROM throttled ORDER BY queue) AS q
), limited AS (
    SELECT {schema}.after_settle(array_agg(queue), array_agg(priority), array_agg(grp),
                                 array_agg(rules), array_agg(held), array_agg(grp IS NOT NULL),
                                 array_agg(run_at), array_agg(run_at), {now}, %(channel)s)
      FROM throttled WHERE held IS NOT NULL OR grp IS NOT NULL HAVING count(*) > 0
)
SELECT throttled.id FROM throttled, woken, (SELECT count(*) FROM limited) AS l;

-- name: ack_succeeded_plain
-- ack_succeeded for deliveries this broker claimed without limits (no group, no slot held: the
-- claim said so, and neither changes while the token is current): nothing to free.
UPDATE {schema}.jobs AS j
   SET state = 'succeeded', result = o.result, finished_at = {now},
       expires_at = {now} + %(retention)s, lease_until = NULL
  FROM unnest(%(ids)b::text[], %(tokens)b::bigint[], %(results)b::bytea[]) AS o (id, token, result)
 WHERE j.id = o.id AND j.token = o.token AND j.state = 'running'
RETURNING j.id;

-- name: ack_retry_plain
-- ack_retry for deliveries claimed without limits (see ack_succeeded_plain).
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

-- name: ack_dead_plain
-- ack_dead for deliveries claimed without limits (see ack_succeeded_plain).
UPDATE {schema}.jobs AS j
   SET state = 'dead', finished_at = {now}, lease_until = NULL,
       errors = j.errors || jsonb_build_array(o.error)
  FROM unnest(%(ids)s::text[], %(tokens)s::bigint[], %(errors)s::jsonb[]) AS o (id, token, error)
 WHERE j.id = o.id AND j.token = o.token AND j.state = 'running'
RETURNING j.id;

-- name: ack_mixed
-- A batch of outcomes of several kinds in one statement: each kind as in its own statement
-- above, then one after_settle for all of them (limit locks in one round, in the claim's order).
-- Returns (kind, id) of the outcomes settled.
WITH o AS (
    SELECT * FROM unnest(%(ids)s::text[], %(tokens)s::bigint[], %(kinds)s::text[],
                         %(results)s::bytea[], %(delays)s::float8[], %(errors)s::jsonb[])
                  AS o (id, token, kind, result, delay, error)
), succeeded AS (
    UPDATE {schema}.jobs AS j
       SET state = 'succeeded', result = o.result, finished_at = {now},
           expires_at = {now} + %(retention)s, lease_until = NULL
      FROM o
     WHERE o.kind = 'succeeded' AND j.id = o.id AND j.token = o.token AND j.state = 'running'
    RETURNING j.id, o.kind, j.queue, j.priority, j.grp, j.rules, j.held, j.run_at
), retried AS (
    UPDATE {schema}.jobs AS j
       SET state = 'pending', run_at = {now} + o.delay, lease_until = NULL, worker = NULL,
           errors = j.errors || jsonb_build_array(o.error)
      FROM o
     WHERE o.kind = 'retry' AND j.id = o.id AND j.token = o.token AND j.state = 'running'
    RETURNING j.id, o.kind, j.queue, j.priority, j.grp, j.rules, j.held, j.run_at
), buried AS (
    UPDATE {schema}.jobs AS j
       SET state = 'dead', finished_at = {now}, lease_until = NULL,
           errors = j.errors || jsonb_build_array(o.error)
      FROM o
     WHERE o.kind = 'dead' AND j.id = o.id AND j.token = o.token AND j.state = 'running'
    RETURNING j.id, o.kind, j.queue, j.priority, j.grp, j.rules, j.held, j.run_at
), throttled AS (
    UPDATE {schema}.jobs AS j
       SET state = 'pending', run_at = {now} + o.delay, lease_until = NULL, worker = NULL,
           attempt = greatest(j.attempt - 1, 0), throttled = coalesce(j.throttled, 0) + 1,
           errors = j.errors || jsonb_build_array(o.error)
      FROM o
     WHERE o.kind = 'throttled' AND j.id = o.id AND j.token = o.token AND j.state = 'running'
    RETURNING j.id, o.kind, j.queue, j.priority, j.grp, j.rules, j.held, j.run_at
), settled AS (
    SELECT * FROM succeeded UNION ALL SELECT * FROM retried
    UNION ALL SELECT * FROM buried UNION ALL SELECT * FROM throttled
), woken AS (
    SELECT count(pg_notify(%(channel)s, queue)) AS n
      FROM (SELECT DISTINCT queue FROM settled WHERE kind IN ('retry', 'throttled') ORDER BY queue) AS q
), limited AS (
    SELECT {schema}.after_settle(array_agg(queue), array_agg(priority), array_agg(grp),
                                 array_agg(rules), array_agg(held),
                                 array_agg(grp IS NOT NULL AND kind IN ('retry', 'throttled')),
                                 array_agg(run_at),
                                 array_agg(CASE WHEN kind = 'throttled' THEN run_at END),
                                 {now}, %(channel)s)
      FROM settled
     WHERE held IS NOT NULL OR (grp IS NOT NULL AND kind IN ('retry', 'throttled'))
    HAVING count(*) > 0
)
SELECT settled.kind, settled.id FROM settled, woken, (SELECT count(*) FROM limited) AS l;

-- name: lock_settling
-- Outcomes with effects settle in several statements of one transaction: take their limit locks
-- first, in the claims' order (see the function), with the groups of their follow-up enqueues.
SELECT {schema}.lock_settling(%(ids)s::text[], %(tokens)s::bigint[], %(kinds)s::text[],
                              %(e_queues)s::text[], %(e_prios)s::int[], %(e_grps)s::text[],
                              %(e_rules)s::jsonb[]);

-- name: ack_dead
-- Outcomes "dead": into the dead letter queue, the error appended to the history.
WITH settled AS (
    UPDATE {schema}.jobs AS j
       SET state = 'dead', finished_at = {now}, lease_until = NULL,
           errors = j.errors || jsonb_build_array(o.error)
      FROM unnest(%(ids)s::text[], %(tokens)s::bigint[], %(errors)s::jsonb[]) AS o (id, token, error)
     WHERE j.id = o.id AND j.token = o.token AND j.state = 'running'
    RETURNING j.id, j.queue, j.held
), limited AS (
    SELECT {schema}.after_settle(array_agg(queue), NULL, NULL, NULL, array_agg(held), NULL, NULL,
                                 NULL, {now}, %(channel)s)
      FROM settled WHERE held IS NOT NULL HAVING count(*) > 0
)
SELECT settled.id FROM settled, (SELECT count(*) FROM limited) AS l;

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
-- Return leased, unstarted jobs to pending and give back their attempt (not the tokens their
-- limits spent); their slots are freed and they rejoin their groups.
WITH released AS (
    UPDATE {schema}.jobs AS j
       SET state = 'pending', attempt = greatest(j.attempt, -2147483647) - 1, lease_until = NULL, worker = NULL, started_at = NULL
      FROM unnest(%(ids)b::text[], %(tokens)b::bigint[]) AS l (id, token)
     WHERE j.id = l.id AND j.token = l.token AND j.state = 'running'
    RETURNING j.queue, j.priority, j.grp, j.rules, j.held, j.run_at
), limited AS (
    SELECT {schema}.after_settle(array_agg(queue), array_agg(priority), array_agg(grp),
                                 array_agg(rules), array_agg(held), array_agg(grp IS NOT NULL),
                                 array_agg(run_at), NULL, {now}, %(channel)s)
      FROM released WHERE held IS NOT NULL OR grp IS NOT NULL HAVING count(*) > 0
)
SELECT released.queue FROM released, (SELECT count(*) FROM limited) AS l;

-- name: any_expired
-- Cheap probe of the running index before reclaim takes any lock.
SELECT 1 FROM {schema}.jobs WHERE state = 'running' AND lease_until < {now} LIMIT 1;

-- name: reclaim
-- Expired leases: pending again, or dead once their attempts are spent; either way the lost
-- attempt is recorded as a WorkerLost error. Leases being acknowledged right now are locked
-- and skipped: their owner is alive. Their slots are freed; those requeued rejoin their groups.
WITH expired AS (
    SELECT id FROM {schema}.jobs
     WHERE state = 'running' AND lease_until < {now}
       FOR UPDATE SKIP LOCKED
), reclaimed AS (
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
RETURNING j.id, j.state, j.queue, j.priority, j.grp, j.rules, j.held, j.run_at
), limited AS (
    SELECT {schema}.after_settle(array_agg(queue), array_agg(priority), array_agg(grp),
                                 array_agg(rules), array_agg(held),
                                 array_agg(grp IS NOT NULL AND state = 'pending'), array_agg(run_at),
                                 NULL, {now}, %(channel)s)
      FROM reclaimed WHERE held IS NOT NULL OR grp IS NOT NULL HAVING count(*) > 0
)
SELECT reclaimed.id, reclaimed.state, reclaimed.queue FROM reclaimed, (SELECT count(*) FROM limited) AS l;

-- name: cancel
UPDATE {schema}.jobs
   SET state = 'cancelled', finished_at = {now}, expires_at = {now} + %(retention)s
 WHERE id = %(id)s AND state IN ('pending', 'parked');

-- name: get
SELECT {columns}, {now}, headers, progress FROM {schema}.jobs WHERE id = %(id)s;

-- name: set_progress
-- Progress of running jobs, each fenced by its token (docs/hooks.md).
UPDATE {schema}.jobs AS j
   SET progress = u.progress::jsonb
  FROM unnest(%(ids)s::text[], %(tokens)s::bigint[], %(progress)s::text[]) AS u (id, token, progress)
 WHERE j.id = u.id AND j.token = u.token AND j.state = 'running';

-- name: stats
-- Counts per queue, priority and reported state, with the oldest ready due time. A parked job
-- (set aside while its task is paused) is pending. Last, per queue with groups of jobs with
-- limits, a row of state NULL: the ready jobs of groups that wait (ready_at past now) and
-- whether the queue's own limit allows no start now (then every ready job is held back).
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
 GROUP BY queue, priority, reported
UNION ALL
SELECT g.queue, NULL, NULL,
       (SELECT count(*) FROM {schema}.limit_groups AS w
          JOIN {schema}.jobs AS j ON j.queue = w.queue AND j.priority = w.priority AND j.grp = w.grp
         WHERE w.queue = g.queue AND w.grp <> '' AND w.ready_at > clock.now
           AND j.state = 'pending' AND j.run_at <= clock.now),
       CASE WHEN EXISTS (
                SELECT 1 FROM {schema}.limit_keys AS k
                 WHERE k.queue = g.queue AND k.key = ''
                   AND (k.closed_until > clock.now
                        OR (coalesce(k.concurrency, 0) > 0 AND k.running >= k.concurrency)
                        OR (coalesce(k.rate, 0) > 0
                            AND floor(coalesce(k.burst, 1) - greatest(0, k.tat - clock.now) * k.rate
                                      + 1e-9) < 1)))
            THEN 1 ELSE 0 END,
       clock.now
  FROM (SELECT DISTINCT queue FROM {schema}.limit_groups
         WHERE %(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[])
        UNION
        SELECT queue FROM {schema}.limit_keys
         WHERE key = '' AND (rate IS NOT NULL OR concurrency IS NOT NULL)
           AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))) AS g, clock;

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
-- Dead jobs ready again with their attempts reset (their error history kept); those with
-- limits rejoin their groups (in the queue they are replayed into).
WITH replayed AS (
    UPDATE {schema}.jobs
       SET state = 'pending', attempt = 0, run_at = {now}, finished_at = NULL, started_at = NULL,
           worker = NULL, snoozes = NULL, queue = coalesce(%(queue)s, queue)
     WHERE state = 'dead' AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
    RETURNING queue, priority, grp, rules, run_at
), limited AS (
    SELECT {schema}.after_settle(array_agg(queue), array_agg(priority), array_agg(grp),
                                 array_agg(rules), NULL, array_agg(true), array_agg(run_at), NULL,
                                 {now}, %(channel)s)
      FROM replayed WHERE grp IS NOT NULL HAVING count(*) > 0
)
SELECT replayed.queue FROM replayed, (SELECT count(*) FROM limited) AS l;

-- name: purge
DELETE FROM {schema}.jobs
 WHERE state = 'dead' AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]));

-- name: idle_groups
-- The expiry sweep's first step, in its transaction: lock up to a batch of groups without a
-- pending job (as this statement sees them), passing those another transaction holds.
SELECT g.queue, g.priority, g.grp FROM {schema}.limit_groups AS g
 WHERE CASE WHEN g.grp = ''
            THEN NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j
                              WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = g.queue
                                AND j.priority = g.priority)
            ELSE NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j
                              WHERE j.state = 'pending' AND j.grp = g.grp AND j.queue = g.queue
                                AND j.priority = g.priority) END
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED;

-- name: forget_idle
-- Then limit state at rest (as SQLite's sqlite_limits.forget_idle): of the groups locked above,
-- those still without a pending, running or parked job, looked at again by this statement, whose snapshot sees
-- every job made pending before (an enqueue or outcome that commits one joins its group by an
-- upsert, which waits for the lock and then makes the row again); their waiters with them. And
-- keys whose bucket is full with no slot held, no throttle and no run-time rule, which a claim
-- or an outcome would make again exactly so; rows another transaction holds are passed. Claims
-- and outcomes take keys by upserts, which make again a row deleted under them.
WITH gone AS (
    DELETE FROM {schema}.limit_groups AS g
     USING unnest(%(queues)s::text[], %(priorities)s::int[], %(grps)s::text[]) AS c (queue, priority, grp)
     WHERE g.queue = c.queue AND g.priority = c.priority AND g.grp = c.grp
       AND CASE WHEN g.grp = ''
                THEN NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j
                                  WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = g.queue
                                    AND j.priority = g.priority)
                ELSE NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j
                                  WHERE j.state = 'pending' AND j.grp = g.grp AND j.queue = g.queue
                                    AND j.priority = g.priority)
                     -- a running or parked job returns to its group (a retry, a snooze, a resume)
                     AND NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j
                                      WHERE j.state IN ('running', 'parked') AND j.grp = g.grp
                                        AND j.queue = g.queue AND j.priority = g.priority) END
    RETURNING g.queue, g.priority, g.grp
), unwaited AS (
    DELETE FROM {schema}.limit_waiters AS w USING gone
     WHERE w.queue = gone.queue AND w.priority = gone.priority AND w.grp = gone.grp
), keys AS (
    SELECT k.queue, k.key FROM {schema}.limit_keys AS k
     WHERE k.rate IS NULL AND k.burst IS NULL AND k.concurrency IS NULL AND k.running = 0
       AND k.tat <= {now} AND coalesce(k.closed_until, 0) <= {now}
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
DELETE FROM {schema}.limit_keys AS k USING keys WHERE k.queue = keys.queue AND k.key = keys.key;

-- name: expire
-- Finished jobs past their retention, at most a batch at a time so the purge never holds
-- many row locks at once.
DELETE FROM {schema}.jobs
 WHERE id IN (SELECT id FROM {schema}.jobs
               WHERE expires_at <= {now}
               LIMIT %(limit)s
                 FOR UPDATE SKIP LOCKED);

-- name: set_limit
-- A run-time limit of a queue (key '': the queue's own) or one of its keys, kept until cleared.
-- The groups it may concern (those with the key; every group of the queue for its own limit)
-- are looked at again from now, their waiters dropped, and the queue's workers woken. The key
-- is locked first; a group another transaction holds is passed (a claim holding it waits for
-- this key and sees the new rule; an enqueue or an outcome holding it makes it ready itself).
WITH kept AS (
    INSERT INTO {schema}.limit_keys AS k (queue, key, rate, burst, concurrency)
    VALUES (%(queue)s::text, %(key)s::text, %(rate)s, %(burst)s, %(concurrency)s)
        ON CONFLICT (queue, key)
        DO UPDATE SET rate = excluded.rate, burst = excluded.burst, concurrency = excluded.concurrency
    RETURNING k.queue
), locked AS (
    SELECT g.queue, g.priority, g.grp FROM {schema}.limit_groups AS g
     WHERE g.queue = %(queue)s::text
       AND (%(key)s::text = '' OR %(key)s::text = ANY (string_to_array(g.grp, chr(31))))
       FOR UPDATE SKIP LOCKED
), regrouped AS (
    UPDATE {schema}.limit_groups AS g SET ready_at = least(g.ready_at, {now})
      FROM locked AS l
     WHERE g.queue = l.queue AND g.priority = l.priority AND g.grp = l.grp
    RETURNING g.queue, g.priority, g.grp
), unwaited AS (
    DELETE FROM {schema}.limit_waiters AS w USING regrouped AS r
     WHERE w.queue = r.queue AND w.priority = r.priority AND w.grp = r.grp
)
SELECT pg_notify(%(channel)s, queue) FROM kept;

-- name: clear_limit
-- Forget a run-time limit (the declared rules apply again); its key's bucket, slots and
-- throttle stay. Returns the key if one was set; the groups are looked at again as for set_limit.
WITH cleared AS (
    UPDATE {schema}.limit_keys AS k SET rate = NULL, burst = NULL, concurrency = NULL
     WHERE k.queue = %(queue)s::text AND k.key = %(key)s::text
       AND (k.rate IS NOT NULL OR k.concurrency IS NOT NULL)
    RETURNING k.queue
), locked AS (
    SELECT g.queue, g.priority, g.grp FROM {schema}.limit_groups AS g
     WHERE g.queue = %(queue)s::text
       AND (%(key)s::text = '' OR %(key)s::text = ANY (string_to_array(g.grp, chr(31))))
       AND EXISTS (SELECT 1 FROM cleared)
       FOR UPDATE OF g SKIP LOCKED
), regrouped AS (
    UPDATE {schema}.limit_groups AS g SET ready_at = least(g.ready_at, {now})
      FROM locked AS l
     WHERE g.queue = l.queue AND g.priority = l.priority AND g.grp = l.grp
    RETURNING g.queue, g.priority, g.grp
), unwaited AS (
    DELETE FROM {schema}.limit_waiters AS w USING regrouped AS r
     WHERE w.queue = r.queue AND w.priority = r.priority AND w.grp = r.grp
)
SELECT pg_notify(%(channel)s, queue) FROM cleared;

-- name: limits
-- Limit keys of a queue (all queues when NULL) with what decides them: the bucket, the slots
-- held, the throttle, the run-time rule, and the declared rules of a group naming the key (or,
-- when no group has pending jobs, of a running job), and whether a group naming it exists.
WITH clock AS (SELECT {now} AS now)
SELECT k.queue, k.key, k.tat, k.running, k.closed_until, k.rate, k.burst, k.concurrency,
       coalesce(
           (SELECT g.rules FROM {schema}.limit_groups AS g
             WHERE g.queue = k.queue AND g.grp <> '' AND k.key = ANY (string_to_array(g.grp, chr(31)))
             LIMIT 1),
           (SELECT j.rules FROM {schema}.jobs AS j
             WHERE j.state = 'running' AND j.queue = k.queue AND j.grp IS NOT NULL
               AND k.key = ANY (string_to_array(j.grp, chr(31)))
             LIMIT 1)),
       EXISTS (SELECT 1 FROM {schema}.limit_groups AS g
                WHERE g.queue = k.queue AND g.grp <> '' AND k.key = ANY (string_to_array(g.grp, chr(31)))),
       clock.now
  FROM {schema}.limit_keys AS k, clock
 WHERE %(queue)s::text IS NULL OR k.queue = %(queue)s::text
 ORDER BY k.queue, k.key;

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
-- Undo a pause; a task's parked jobs are pending again and the queue's workers are woken. Parked
-- jobs with limits rejoin their groups (docs/flow-control.md), as an enqueue adds them: the
-- group's row is created if a claim deleted it meanwhile, and is ready no later than they are due.
WITH gone AS (
    DELETE FROM {schema}.paused WHERE queue = %(queue)s::text AND task = %(task)s::text
), unparked AS (
    UPDATE {schema}.jobs SET state = 'pending'
     WHERE state = 'parked' AND queue = %(queue)s::text AND task = %(task)s::text
    RETURNING queue, priority, grp, rules, run_at, seq
), regrouped AS (
    INSERT INTO {schema}.limit_groups AS g (queue, priority, grp, rules, turn, ready_at)
    SELECT u.queue, u.priority, u.grp, (array_agg(u.rules ORDER BY u.seq DESC))[1], 0, min(u.run_at)
      FROM unparked AS u
     WHERE u.grp IS NOT NULL
     GROUP BY u.queue, u.priority, u.grp
     ORDER BY u.queue, u.priority, u.grp
        ON CONFLICT (queue, priority, grp)
        DO UPDATE SET ready_at = least(g.ready_at, excluded.ready_at)
)
SELECT pg_notify(%(channel)s, %(queue)s::text);

-- name: paused
SELECT queue, task, since FROM {schema}.paused
 WHERE %(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]);

-- == Job control (docs/job-control.md) =========================================================

-- name: request_cancel
-- Cancel a job whatever its state: pending (or parked) is cancelled at once; running is marked
-- for its current run (kept if marked already) and its worker woken on the channel, with "!"
-- and its worker id (no queue is named so); returns the state found (no row: no such job).
WITH found AS (
    SELECT id, state, token, worker FROM {schema}.jobs WHERE id = %(id)s FOR UPDATE
), cancelled AS (
    UPDATE {schema}.jobs AS j
       SET state = 'cancelled', finished_at = {now}, expires_at = {now} + %(retention)s
      FROM found WHERE j.id = found.id AND found.state IN ('pending', 'parked')
    RETURNING j.id
), marked AS (
    UPDATE {schema}.jobs AS j
       SET cancel_token = j.token, cancel_grace = %(grace)s
      FROM found
     WHERE j.id = found.id AND found.state = 'running' AND j.cancel_token IS DISTINCT FROM j.token
    RETURNING j.id
), woken AS (
    SELECT count(pg_notify(%(channel)s, '!' || found.worker)) AS n
      FROM found WHERE found.state = 'running' AND found.worker IS NOT NULL
)
SELECT found.state FROM found, woken, (SELECT count(*) FROM cancelled) AS c,
       (SELECT count(*) FROM marked) AS m;

-- name: cancelling
-- Of the leases given, those held whose run has a cancel request, with its grace.
SELECT j.id, j.cancel_grace
  FROM {schema}.jobs AS j
  JOIN unnest(%(ids)s::text[], %(tokens)s::bigint[]) AS l (id, token) ON j.id = l.id AND j.token = l.token
 WHERE j.state = 'running' AND j.cancel_token = j.token;

-- name: ack_control
-- Outcomes "cancelled" and "snoozed" (with "retry"/"throttled" as ack_retry/ack_throttled do
-- them, these are the other ways out of running that need no effects). A cancelled outcome, or
-- any of a run with a cancel request, ends the job cancelled; a snooze past the job's cap buries
-- it with the outcome's error; any other snooze makes it pending again after the delay with the
-- attempt given back, nothing recorded, no key closed. Slots are freed and the jobs pending
-- again rejoin their groups (after_settle); their queues are woken. Returns the ids settled.
WITH o AS (
    SELECT o.id, o.token, o.kind, o.delay, o.error,
           CASE WHEN o.kind = 'cancelled' OR j.cancel_token = j.token THEN 'cancelled'
                WHEN coalesce(j.snoozes, 0) >= o.max_snoozes THEN 'dead'
                ELSE 'pending' END AS next
      FROM unnest(%(ids)s::text[], %(tokens)s::bigint[], %(kinds)s::text[], %(delays)s::float8[],
                  %(errors)s::jsonb[], %(caps)s::integer[]) AS o (id, token, kind, delay, error, max_snoozes)
      JOIN {schema}.jobs AS j ON j.id = o.id AND j.token = o.token AND j.state = 'running'
       FOR UPDATE OF j
), settled AS (
    UPDATE {schema}.jobs AS j
       SET state = o.next,
           run_at = CASE WHEN o.next = 'pending' THEN {now} + o.delay ELSE j.run_at END,
           finished_at = CASE WHEN o.next = 'pending' THEN j.finished_at ELSE {now} END,
           expires_at = CASE WHEN o.next = 'cancelled' THEN {now} + %(retention)s ELSE j.expires_at END,
           lease_until = NULL,
           worker = CASE WHEN o.next = 'pending' THEN NULL ELSE j.worker END,
           attempt = CASE WHEN o.next = 'pending' THEN greatest(j.attempt - 1, 0) ELSE j.attempt END,
           snoozes = CASE WHEN o.next = 'pending' THEN coalesce(j.snoozes, 0) + 1 ELSE j.snoozes END,
           errors = CASE WHEN o.error IS NULL OR (o.kind = 'snoozed' AND o.next <> 'dead') THEN j.errors
                         ELSE j.errors || jsonb_build_array(o.error) END
      FROM o
     WHERE j.id = o.id AND j.token = o.token AND j.state = 'running'
    RETURNING j.id, j.state, j.queue, j.priority, j.grp, j.rules, j.held, j.run_at
), woken AS (
    SELECT count(pg_notify(%(channel)s, queue)) AS n
      FROM (SELECT DISTINCT queue FROM settled WHERE state = 'pending' ORDER BY queue) AS q
), limited AS (
    SELECT {schema}.after_settle(array_agg(queue), array_agg(priority), array_agg(grp),
                                 array_agg(rules), array_agg(held),
                                 array_agg(grp IS NOT NULL AND state = 'pending'), array_agg(run_at),
                                 NULL, {now}, %(channel)s)
      FROM settled WHERE held IS NOT NULL OR (grp IS NOT NULL AND state = 'pending') HAVING count(*) > 0
)
SELECT settled.id FROM settled, woken, (SELECT count(*) FROM limited) AS l;

-- name: cancel_returned
-- After retry and throttled outcomes, in their transaction: those of a run with a cancel request
-- end the job cancelled instead (the request holds for the run whose token it names).
UPDATE {schema}.jobs AS j
   SET state = 'cancelled', finished_at = {now}, expires_at = {now} + %(retention)s
  FROM unnest(%(ids)s::text[], %(tokens)s::bigint[]) AS l (id, token)
 WHERE j.id = l.id AND j.token = l.token AND j.state IN ('pending', 'parked') AND j.cancel_token = j.token;
