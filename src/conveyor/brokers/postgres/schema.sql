-- The current schema, applied as a whole to a fresh store; {schema} is the broker's schema.
-- Every change goes here AND into a new file in migrations/ (tests/postgres/test_migrations.py
-- checks that the migrations, applied in order, give exactly this schema).
--
-- Times are Unix seconds in double precision: the broker contract's unit, compared with
-- extract(epoch from now()) so the database's clock decides due times and lease expiry.
-- "pending" covers scheduled and ready: a pending job is ready once run_at <= now, so no
-- promotion step exists and the claim index serves both.
CREATE TABLE {schema}.jobs (
    -- Enqueue order: the FIFO tie-break within one due time, and the listing order.
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    id           text             NOT NULL PRIMARY KEY,
    task         text             NOT NULL,
    queue        text             NOT NULL,
    priority     integer          NOT NULL,
    state        text             NOT NULL
                 CHECK (state IN ('pending', 'parked', 'running', 'succeeded', 'dead', 'cancelled')),
    payload      bytea            NOT NULL,
    run_at       double precision NOT NULL,
    enqueued_at  double precision NOT NULL,
    -- Counted at claim; a release gives it back.
    attempt      integer          NOT NULL DEFAULT 0,
    max_attempts integer          NOT NULL,
    -- Fencing token: bumped by every claim; every exit from running must present it.
    token        bigint           NOT NULL DEFAULT 0,
    lease_until  double precision,
    worker       text,
    started_at   double precision,
    finished_at  double precision,
    -- Set when a job succeeds or is cancelled: the retention purge deletes it after this.
    expires_at   double precision,
    key          text,
    result       bytea,
    -- One object per failed attempt: attempt, type, message, traceback, worker, at.
    errors       jsonb            NOT NULL DEFAULT '[]',
    -- Limits (docs/flow-control.md): the job's group (its limit keys joined by chr(31); NULL
    -- without limits), its rules as enqueued (a JSON array of [key, rate, burst, concurrency]),
    -- the keys whose concurrency slot it holds while running ('' for the queue's own limit), and
    -- how many times it was throttled (RateLimited: an attempt not counted; NULL for none, which
    -- costs a row no bytes beyond its null bitmap).
    grp          text,
    rules        jsonb,
    held         jsonb,
    throttled    integer,
    -- Job control (docs/job-control.md): a cancel request holds for the run whose token it
    -- names, with its grace; the job's snoozes (NULL for none).
    cancel_token bigint,
    cancel_grace double precision,
    snoozes      integer,
    -- Job headers (docs/hooks.md): a JSON object of str to str, NULL without any.
    headers      jsonb,
    -- The latest progress a running job reported (docs/hooks.md): [value, message], NULL for none.
    progress     jsonb
);
-- Claim and the earliest due time: one range scan per (queue, priority), FIFO by due time;
-- jobs with limits are claimed through their groups (jobs_group).
CREATE INDEX jobs_claim ON {schema}.jobs (queue, priority, run_at, seq) WHERE state = 'pending' AND grp IS NULL;
CREATE INDEX jobs_group ON {schema}.jobs (queue, priority, grp, run_at, seq)
    WHERE state = 'pending' AND grp IS NOT NULL;
-- Reclaim: expired leases only.
CREATE INDEX jobs_running ON {schema}.jobs (lease_until) WHERE state = 'running';
-- Enqueue dedupe: a key belongs to one job of its queue until that job's retention ends.
CREATE UNIQUE INDEX jobs_key ON {schema}.jobs (queue, key) WHERE key IS NOT NULL;
-- Retention purge of finished jobs.
CREATE INDEX jobs_expires ON {schema}.jobs (expires_at) WHERE expires_at IS NOT NULL;
-- The dead letter queue, newest first.
CREATE INDEX jobs_dead ON {schema}.jobs (finished_at) WHERE state = 'dead';
-- Live workers, as they report themselves with each heartbeat (WorkerInfo as JSON).
CREATE TABLE {schema}.workers (
    id      text             NOT NULL PRIMARY KEY,
    info    jsonb            NOT NULL,
    expires double precision NOT NULL
);
-- Limits (docs/flow-control.md). A group: the pending jobs of one (queue, level) with the same
-- limit keys ("grp", the keys joined by chr(31); '' for the jobs without limits, which take
-- turns with the groups). Its row exists while it has pending jobs: "rules" as the latest
-- enqueue into it declared them, "turn" its place in the round robin (the group served gets the
-- level's highest turn + 1), "ready_at" no earlier than which a claim looks at it.
CREATE TABLE {schema}.limit_groups (
    queue    text             NOT NULL,
    priority integer          NOT NULL,
    grp      text             NOT NULL,
    rules    jsonb,
    turn     bigint           NOT NULL DEFAULT 0,
    ready_at double precision NOT NULL,
    PRIMARY KEY (queue, priority, grp)
);
CREATE INDEX limit_groups_ready ON {schema}.limit_groups (queue, priority, ready_at);
-- A limit key of a queue: its bucket ("tat", the generic cell rate algorithm's theoretical
-- arrival time), the slots held, the end of a RateLimited throttle, and a run-time rule that
-- overrides the declared one (key '': the queue's own limit, which exists only as one).
CREATE TABLE {schema}.limit_keys (
    queue        text             NOT NULL,
    key          text             NOT NULL,
    tat          double precision NOT NULL DEFAULT 0,
    running      integer          NOT NULL DEFAULT 0,
    closed_until double precision,
    rate         double precision,
    burst        integer,
    concurrency  integer,
    PRIMARY KEY (queue, key)
);
-- Groups blocked on a key's concurrency (ready_at +infinity): a freed slot makes them ready.
CREATE TABLE {schema}.limit_waiters (
    queue    text    NOT NULL,
    key      text    NOT NULL,
    priority integer NOT NULL,
    grp      text    NOT NULL,
    PRIMARY KEY (queue, key, priority, grp)
);
-- Version 3's reserve function, kept for workers of earlier versions during a rolling deploy
-- (the broker calls the one below it, with queue weights).
-- Reserve in one round trip: count the due jobs of each (queue, level), split the reservation
-- across the levels by smooth weighted round robin (conveyor.priority.Fairness.split, from the
-- worker's state in "fair", which the last row hands back), deal each level's share to its
-- queues round robin, and claim the oldest due jobs of each share. For one queue, the count is a
-- walk that locks up to the limit per level (the broker's "candidates" statement), and the claim
-- takes its share of those: every job claimed since the last vacuum leaves a dead index entry
-- at the head of the range, and one walk reads past them once, not twice. For several queues,
-- it counts without locks (the broker's count_ready statement) and locks only the share, so
-- as to hold no more than the limit. The split is the same arithmetic as Fairness.split.
-- Rows: the claimed jobs (fair NULL), then one row with only fair: the worker's new state.
CREATE FUNCTION {schema}.reserve(
    queues text[], weights integer[], fair integer[], lim integer, lease double precision,
    worker_id text, at double precision
) RETURNS TABLE (r_id text, r_task text, r_queue text, r_priority integer, r_payload bytea,
                 r_attempt integer, r_max_attempts integer, r_token bigint,
                 r_run_at double precision, r_enqueued_at double precision, r_key text,
                 r_fair integer[])
LANGUAGE plpgsql AS $fn$
DECLARE
    levels  integer := coalesce(array_length(weights, 1), 0);
    nq      integer := coalesce(array_length(queues, 1), 0);
    clock   double precision := coalesce(at, extract(epoch from now()));
    cand_k  integer[];  -- one queue: the locked candidates' level + 1
    cand_id text[];
    ready   integer[] := array_fill(0, ARRAY[levels * nq]);
    want    integer[] := array_fill(0, ARRAY[levels * nq]);
    lft     integer[] := array_fill(0, ARRAY[levels]);
    take    integer[] := array_fill(0, ARRAY[levels]);
    cur     integer[] := fair;
    got     integer[];
    chosen  text[] := '{}';
    total   integer;
    best    integer;
    n       integer;
    k       integer;
    dealt   boolean;
BEGIN
    IF nq = 1 THEN
        -- One queue: lock up to lim due jobs of each level, oldest first. One walk of each
        -- range both counts the jobs this claimer can have and holds them; those not taken
        -- below are unlocked at commit, untouched.
        SELECT array_agg(w.ord + 1 ORDER BY w.ord, c.run_at, c.seq),
               array_agg(c.id ORDER BY w.ord, c.run_at, c.seq)
          INTO cand_k, cand_id
          FROM generate_series(0, levels - 1) AS w (ord)
         CROSS JOIN LATERAL (
               SELECT j.id, j.run_at, j.seq FROM {schema}.jobs AS j
                WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = queues[1] AND j.priority = w.ord
                  AND j.run_at <= clock
                ORDER BY j.run_at, j.seq
                LIMIT lim
                  FOR UPDATE SKIP LOCKED) AS c;
        FOR i IN 1 .. coalesce(array_length(cand_k, 1), 0) LOOP
            ready[cand_k[i]] := ready[cand_k[i]] + 1;
        END LOOP;
    ELSE
        -- Several queues: count (capped at lim, no locks), then lock only the share below.
        -- Locking up to lim in every queue and level would hold many times the limit.
        SELECT array_agg(c.n ORDER BY w.ord) INTO ready
          FROM generate_series(0, levels * nq - 1) AS w (ord)
         CROSS JOIN LATERAL (
               SELECT count(*)::integer AS n
                 FROM (SELECT 1 FROM {schema}.jobs AS j
                        WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = queues[w.ord % nq + 1]
                          AND j.priority = w.ord / nq AND j.run_at <= clock
                        LIMIT lim) AS capped) AS c;
    END IF;
    FOR l IN 1 .. levels LOOP
        FOR q IN 1 .. nq LOOP
            lft[l] := lft[l] + ready[(l - 1) * nq + q];
        END LOOP;
    END LOOP;
    FOR step IN 1 .. lim LOOP
        total := 0;
        best := 0;
        FOR l IN 1 .. levels LOOP
            IF lft[l] <= 0 THEN
                cur[l] := 0;
                CONTINUE;
            END IF;
            cur[l] := cur[l] + weights[l];
            total := total + weights[l];
            IF best = 0 OR cur[l] > cur[best] THEN
                best := l;
            END IF;
        END LOOP;
        EXIT WHEN best = 0;
        cur[best] := cur[best] - total;
        take[best] := take[best] + 1;
        lft[best] := lft[best] - 1;
    END LOOP;
    FOR l IN 1 .. levels LOOP
        n := take[l];
        got := array_fill(0, ARRAY[nq]);
        WHILE n > 0 LOOP
            dealt := false;
            FOR q IN 1 .. nq LOOP
                IF n > 0 AND got[q] < ready[(l - 1) * nq + q] THEN
                    got[q] := got[q] + 1;
                    n := n - 1;
                    dealt := true;
                END IF;
            END LOOP;
            EXIT WHEN NOT dealt;
        END LOOP;
        FOR q IN 1 .. nq LOOP
            want[(l - 1) * nq + q] := got[q];
        END LOOP;
    END LOOP;
    -- Each (queue, level) takes its oldest due jobs, as many as dealt to it.
    IF nq = 1 THEN
        FOR i IN 1 .. coalesce(array_length(cand_k, 1), 0) LOOP
            k := cand_k[i];
            IF want[k] > 0 THEN
                chosen := chosen || cand_id[i];
                want[k] := want[k] - 1;
            END IF;
        END LOOP;
    ELSE
        SELECT coalesce(array_agg(c.id), '{}') INTO chosen
          FROM generate_series(0, levels * nq - 1) AS w (ord)
         CROSS JOIN LATERAL (
               SELECT j.id FROM {schema}.jobs AS j
                WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = queues[w.ord % nq + 1]
                  AND j.priority = w.ord / nq AND j.run_at <= clock
                ORDER BY j.run_at, j.seq
                LIMIT want[w.ord + 1]
                  FOR UPDATE SKIP LOCKED) AS c;
    END IF;
    IF cardinality(chosen) > 0 THEN
        RETURN QUERY
        UPDATE {schema}.jobs AS j
           SET state = 'running',
               -- Saturated: a stored maximum (a corrupt row) must not fail the reservation.
               attempt = CASE WHEN j.attempt < 2147483647 THEN j.attempt + 1 ELSE j.attempt END,
               token = CASE WHEN j.token < 9223372036854775807 THEN j.token + 1 ELSE 0 END,
               lease_until = clock + lease, worker = worker_id, started_at = clock
          FROM unnest(chosen) AS picked (id)
         WHERE j.id = picked.id
        RETURNING j.id, j.task, j.queue, j.priority, j.payload, j.attempt, j.max_attempts, j.token,
                  j.run_at, j.enqueued_at, j.key, NULL::integer[];
    END IF;
    RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, NULL::integer, NULL::bytea,
                        NULL::integer, NULL::integer, NULL::bigint, NULL::double precision,
                        NULL::double precision, NULL::text, cur;
END
$fn$;
-- Reserve in one round trip: count the due jobs of each (queue, stored level), split the
-- reservation across the worker's levels by smooth weighted round robin
-- (conveyor.priority.Fairness.split, from the worker's state in "fair"), deal each level's share
-- to its queues by their weights in "qweights" with the same round robin (Fairness.deal, from
-- the worker's state in "qfair", level-major: qfair[(level - 1) * nq + queue]) or, when
-- "in_order" (strict order), in the order listed, and claim the oldest due jobs of each share.
-- The last level also takes the stored levels above it, which a producer configured with more
-- levels wrote: after its own due jobs, rather than never. For one queue, the count is a walk that locks up
-- to the limit per stored level (the broker's "candidates" statement), and the claim takes its
-- share of those: every job claimed since the last vacuum leaves a dead index entry at the head
-- of the range, and one walk reads past them once, not twice. For several queues, it counts
-- without locks (the broker's count_ready statement) and locks only the share, so as to hold no
-- more than the limit.
-- Rows: the claimed jobs (fair and qfair NULL), then one row with only fair and qfair: the
-- worker's new state.
CREATE FUNCTION {schema}.reserve(
    queues text[], weights integer[], fair integer[], qweights integer[], qfair integer[],
    in_order boolean, lim integer, lease double precision, worker_id text, at double precision
) RETURNS TABLE (r_id text, r_task text, r_queue text, r_priority integer, r_payload bytea,
                 r_attempt integer, r_max_attempts integer, r_token bigint,
                 r_run_at double precision, r_enqueued_at double precision, r_key text,
                 r_fair integer[], r_qfair integer[], r_throttled integer,
                 r_limited boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
    levels  integer := coalesce(array_length(weights, 1), 0);
    nq      integer := coalesce(array_length(queues, 1), 0);
    clock   double precision := coalesce(at, extract(epoch from now()));
    stored  integer[];  -- the stored levels served: 0 .. levels - 1, then those above
    ns      integer;
    cand_k  integer[];  -- one queue: the locked candidates' stored level index
    cand_id text[];
    ready   integer[];  -- per (stored level, queue): (s - 1) * nq + q
    want    integer[];
    avail   integer[];
    lft     integer[] := array_fill(0, ARRAY[levels]);
    take    integer[] := array_fill(0, ARRAY[levels]);
    cur     integer[] := fair;
    qcur    integer[] := qfair;
    got     integer[];
    chosen  text[] := '{}';
    total   integer;
    best    integer;
    n       integer;
    k       integer;
    lv      integer;
BEGIN
    -- Limits (docs/flow-control.md): a reservation from a queue with groups of limited jobs or
    -- a limit of its own is reserve_limited's; every other one is the claim below, as before.
    PERFORM 1 FROM (SELECT 1 FROM {schema}.limit_groups AS g WHERE g.queue = ANY (queues) AND g.grp <> ''
                    UNION ALL
                    SELECT 1 FROM {schema}.limit_keys AS lk
                     WHERE lk.queue = ANY (queues) AND lk.key = ''
                       AND (lk.rate IS NOT NULL OR lk.concurrency IS NOT NULL)
                    LIMIT 1) AS limited;
    IF FOUND THEN
        RETURN QUERY SELECT * FROM {schema}.reserve_limited(queues, weights, fair, qweights, qfair,
                                                           in_order, lim, lease, worker_id, clock);
        RETURN;
    END IF;
    stored := '{}';
    FOR l IN 0 .. levels - 1 LOOP
        stored := stored || l;
    END LOOP;
    ns := levels;
    -- Count the due jobs of the worker's levels; then, only if a pending job of the queues sits
    -- above them (one index probe), find those levels (one probe each) and count theirs too.
    IF nq = 1 THEN
        -- One queue: lock up to lim due jobs of each stored level, oldest first. One walk of
        -- each range both counts the jobs this claimer can have and holds them; those not taken
        -- below are unlocked at commit, untouched.
        SELECT array_agg(w.ord + 1 ORDER BY w.ord, c.run_at, c.seq),
               array_agg(c.id ORDER BY w.ord, c.run_at, c.seq)
          INTO cand_k, cand_id
          FROM generate_series(0, levels - 1) AS w (ord)
         CROSS JOIN LATERAL (
               SELECT j.id, j.run_at, j.seq FROM {schema}.jobs AS j
                WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = queues[1] AND j.priority = w.ord
                  AND j.run_at <= clock
                ORDER BY j.run_at, j.seq
                LIMIT lim
                  FOR UPDATE SKIP LOCKED) AS c;
    ELSE
        -- Several queues: count (capped at lim, no locks), then lock only the share below.
        -- Locking up to lim in every queue and level would hold many times the limit.
        SELECT array_agg(c.n ORDER BY w.ord) INTO ready
          FROM generate_series(0, levels * nq - 1) AS w (ord)
         CROSS JOIN LATERAL (
               SELECT count(*)::integer AS n
                 FROM (SELECT 1 FROM {schema}.jobs AS j
                        WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = queues[w.ord % nq + 1]
                          AND j.priority = w.ord / nq AND j.run_at <= clock
                        LIMIT lim) AS capped) AS c;
    END IF;
    IF EXISTS (SELECT 1 FROM {schema}.jobs AS j
                WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = ANY (queues) AND j.priority >= levels) THEN
        WITH RECURSIVE probe AS (
            SELECT q.queue, first.priority
              FROM unnest(queues) AS q (queue)
             CROSS JOIN LATERAL (
                   SELECT j.priority FROM {schema}.jobs AS j
                    WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = q.queue AND j.priority >= levels
                    ORDER BY j.priority LIMIT 1) AS first
            UNION ALL
            SELECT probe.queue, next.priority
              FROM probe
             CROSS JOIN LATERAL (
                   SELECT j.priority FROM {schema}.jobs AS j
                    WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = probe.queue AND j.priority > probe.priority
                    ORDER BY j.priority LIMIT 1) AS next
        )
        SELECT stored || array_agg(DISTINCT probe.priority ORDER BY probe.priority) INTO stored FROM probe;
        ns := cardinality(stored);
        IF nq = 1 THEN
            SELECT cand_k || array_agg(w.ord + 1 ORDER BY w.ord, c.run_at, c.seq),
                   cand_id || array_agg(c.id ORDER BY w.ord, c.run_at, c.seq)
              INTO cand_k, cand_id
              FROM generate_series(levels, ns - 1) AS w (ord)
             CROSS JOIN LATERAL (
                   SELECT j.id, j.run_at, j.seq FROM {schema}.jobs AS j
                    WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = queues[1] AND j.priority = stored[w.ord + 1]
                      AND j.run_at <= clock
                    ORDER BY j.run_at, j.seq
                    LIMIT lim
                      FOR UPDATE SKIP LOCKED) AS c;
        ELSE
            SELECT ready || array_agg(c.n ORDER BY w.ord) INTO ready
              FROM generate_series(levels * nq, ns * nq - 1) AS w (ord)
             CROSS JOIN LATERAL (
                   SELECT count(*)::integer AS n
                     FROM (SELECT 1 FROM {schema}.jobs AS j
                            WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = queues[w.ord % nq + 1]
                              AND j.priority = stored[w.ord / nq + 1] AND j.run_at <= clock
                            LIMIT lim) AS capped) AS c;
        END IF;
    END IF;
    want := array_fill(0, ARRAY[ns * nq]);
    IF nq = 1 THEN
        ready := array_fill(0, ARRAY[ns]);
        FOR i IN 1 .. coalesce(array_length(cand_k, 1), 0) LOOP
            ready[cand_k[i]] := ready[cand_k[i]] + 1;
        END LOOP;
    END IF;
    FOR s IN 1 .. ns LOOP
        lv := least(s, levels);
        FOR q IN 1 .. nq LOOP
            lft[lv] := lft[lv] + ready[(s - 1) * nq + q];
        END LOOP;
    END LOOP;
    -- The split across levels: Fairness.split.
    FOR step IN 1 .. lim LOOP
        total := 0;
        best := 0;
        FOR l IN 1 .. levels LOOP
            IF lft[l] <= 0 THEN
                cur[l] := 0;
                CONTINUE;
            END IF;
            cur[l] := cur[l] + weights[l];
            total := total + weights[l];
            IF best = 0 OR cur[l] > cur[best] THEN
                best := l;
            END IF;
        END LOOP;
        EXIT WHEN best = 0;
        cur[best] := cur[best] - total;
        take[best] := take[best] + 1;
        lft[best] := lft[best] - 1;
    END LOOP;
    -- Each level's share across its queues: Fairness.deal.
    FOR l IN 1 .. levels LOOP
        n := take[l];
        CONTINUE WHEN n = 0;
        avail := array_fill(0, ARRAY[nq]);
        got := array_fill(0, ARRAY[nq]);
        FOR s IN l .. (CASE WHEN l = levels THEN ns ELSE l END) LOOP
            FOR q IN 1 .. nq LOOP
                avail[q] := avail[q] + ready[(s - 1) * nq + q];
            END LOOP;
        END LOOP;
        IF in_order OR nq = 1 THEN  -- (one queue: its round robin state stays 0)
            FOR q IN 1 .. nq LOOP
                got[q] := least(n, avail[q]);
                n := n - got[q];
            END LOOP;
        ELSE
            FOR step IN 1 .. n LOOP
                total := 0;
                best := 0;
                FOR q IN 1 .. nq LOOP
                    k := (l - 1) * nq + q;
                    IF avail[q] - got[q] <= 0 THEN
                        qcur[k] := 0;
                        CONTINUE;
                    END IF;
                    qcur[k] := qcur[k] + qweights[q];
                    total := total + qweights[q];
                    IF best = 0 OR qcur[k] > qcur[(l - 1) * nq + best] THEN
                        best := q;
                    END IF;
                END LOOP;
                EXIT WHEN best = 0;
                qcur[(l - 1) * nq + best] := qcur[(l - 1) * nq + best] - total;
                got[best] := got[best] + 1;
            END LOOP;
        END IF;
        -- A queue's share of the level, from its stored levels in order.
        FOR s IN l .. (CASE WHEN l = levels THEN ns ELSE l END) LOOP
            FOR q IN 1 .. nq LOOP
                k := least(got[q], ready[(s - 1) * nq + q]);
                want[(s - 1) * nq + q] := k;
                got[q] := got[q] - k;
            END LOOP;
        END LOOP;
    END LOOP;
    -- Each (queue, stored level) takes its oldest due jobs, as many as dealt to it.
    IF nq = 1 THEN
        FOR i IN 1 .. coalesce(array_length(cand_k, 1), 0) LOOP
            k := cand_k[i];
            IF want[k] > 0 THEN
                chosen := chosen || cand_id[i];
                want[k] := want[k] - 1;
            END IF;
        END LOOP;
    ELSE
        SELECT coalesce(array_agg(c.id), '{}') INTO chosen
          FROM generate_series(0, ns * nq - 1) AS w (ord)
         CROSS JOIN LATERAL (
               SELECT j.id FROM {schema}.jobs AS j
                WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = queues[w.ord % nq + 1]
                  AND j.priority = stored[w.ord / nq + 1] AND j.run_at <= clock
                ORDER BY j.run_at, j.seq
                LIMIT want[w.ord + 1]
                  FOR UPDATE SKIP LOCKED) AS c;
    END IF;
    IF cardinality(chosen) > 0 THEN
        RETURN QUERY
        UPDATE {schema}.jobs AS j
           SET state = 'running',
               -- Saturated: a stored maximum (a corrupt row) must not fail the reservation.
               attempt = CASE WHEN j.attempt < 2147483647 THEN j.attempt + 1 ELSE j.attempt END,
               token = CASE WHEN j.token < 9223372036854775807 THEN j.token + 1 ELSE 0 END,
               lease_until = clock + lease, worker = worker_id, started_at = clock, held = NULL
          FROM unnest(chosen) AS picked (id)
         WHERE j.id = picked.id
        RETURNING j.id, j.task, j.queue, j.priority, j.payload, j.attempt, j.max_attempts, j.token,
                  j.run_at, j.enqueued_at, j.key, NULL::integer[], NULL::integer[], j.throttled,
                  false;
    END IF;
    RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, NULL::integer, NULL::bytea,
                        NULL::integer, NULL::integer, NULL::bigint, NULL::double precision,
                        NULL::double precision, NULL::text, cur, qcur, NULL::integer, NULL::boolean;
END
$fn$;
-- A job's or group's declared rules (a JSON array of [key, rate, burst, concurrency]) as rows;
-- anything else (a corrupt value) as no rows: that job or group is treated as having no limits.
CREATE FUNCTION {schema}.limit_rules(rules jsonb)
RETURNS TABLE (key text, rate double precision, burst integer, concurrency integer)
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT r ->> 0, (r ->> 1)::double precision,
           least(greatest((r ->> 2)::numeric, 1), 1000000000)::integer,
           least(greatest((r ->> 3)::numeric, 0), 1000000000)::integer
      FROM jsonb_array_elements(CASE WHEN jsonb_typeof(rules) = 'array' THEN rules ELSE '[]' END) AS r
     WHERE CASE WHEN jsonb_typeof(r) = 'array' AND jsonb_array_length(r) = 4
                THEN jsonb_typeof(r -> 0) = 'string' AND jsonb_typeof(r -> 1) = 'number'
                     AND jsonb_typeof(r -> 2) = 'number' AND jsonb_typeof(r -> 3) = 'number'
                ELSE false END
$fn$;
-- What every exit from running (and every return to pending) does to limits, after the jobs'
-- own update: grouped jobs back to pending ("back") rejoin their group, ready no later than their
-- due time; the slots of "helds" are freed; the keys of a throttled job's group are closed until
-- "closes"; the groups waiting for a freed slot become ready now and their queues are woken.
-- Lock order, as in every claim: group rows (queue, priority, grp), then limit keys (queue, key);
-- a group another transaction holds is passed, not waited for (a claim holding it re-examines
-- it with the slot freed; an enqueue or return to pending makes it ready itself). Called only
-- for outcomes of jobs with limits (or a queue limit): the others pay nothing.
CREATE FUNCTION {schema}.after_settle(
    queues text[], prios integer[], grps text[], rules jsonb[], helds jsonb[], back boolean[],
    dues double precision[], closes double precision[], clock double precision, channel text
) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    t_q     text[];
    t_k     text[];
    t_n     integer[];
    t_until double precision[];
    woken   text[];
BEGIN
    INSERT INTO {schema}.limit_groups AS g (queue, priority, grp, rules, turn, ready_at)
    SELECT a.queue, a.prio, a.grp, (array_agg(a.rules))[1], 0, min(a.due)
      FROM unnest(queues, prios, grps, rules, back, dues) AS a (queue, prio, grp, rules, back, due)
     WHERE a.back AND a.grp IS NOT NULL
     GROUP BY a.queue, a.prio, a.grp
     ORDER BY a.queue, a.prio, a.grp
        ON CONFLICT (queue, priority, grp) DO UPDATE SET ready_at = least(g.ready_at, excluded.ready_at);
    SELECT array_agg(x.queue ORDER BY x.queue, x.key), array_agg(x.key ORDER BY x.queue, x.key),
           array_agg(x.n ORDER BY x.queue, x.key), array_agg(x.until ORDER BY x.queue, x.key)
      INTO t_q, t_k, t_n, t_until
      FROM (SELECT u.queue, u.key, sum(u.n)::integer AS n, max(u.until) AS until
              FROM (SELECT a.queue, h.key, 1 AS n, NULL::double precision AS until
                      FROM unnest(queues, helds) AS a (queue, held)
                     CROSS JOIN LATERAL jsonb_array_elements_text(
                           CASE WHEN jsonb_typeof(a.held) = 'array' THEN a.held ELSE '[]' END) AS h (key)
                    UNION ALL
                    SELECT a.queue, k.key, 0, a.close
                      FROM unnest(queues, grps, closes) AS a (queue, grp, close)
                     CROSS JOIN LATERAL unnest(string_to_array(a.grp, chr(31))) AS k (key)
                     WHERE a.close IS NOT NULL AND a.grp IS NOT NULL) AS u
             GROUP BY u.queue, u.key) AS x;
    IF t_q IS NULL THEN
        RETURN 0;
    END IF;
    -- Every key in one statement, in (queue, key) order: its slots freed, closed until the
    -- latest throttle's end. A key to close gets a row, made again if the expiry sweep deleted
    -- it (at rest) meanwhile: an upsert updates the row it finds, or makes one (no slot held).
    INSERT INTO {schema}.limit_keys AS k (queue, key, closed_until)
    SELECT u.queue, u.key, u.until FROM unnest(t_q, t_k, t_until) AS u (queue, key, until)
     WHERE u.until IS NOT NULL OR EXISTS (SELECT 1 FROM {schema}.limit_keys AS k2
                                           WHERE k2.queue = u.queue AND k2.key = u.key)
     ORDER BY u.queue, u.key
        ON CONFLICT (queue, key) DO UPDATE
       SET running = greatest(0, k.running - (SELECT u2.n FROM unnest(t_q, t_k, t_n) AS u2 (queue, key, n)
                                                WHERE u2.queue = k.queue AND u2.key = k.key)),
           closed_until = CASE WHEN excluded.closed_until IS NULL THEN k.closed_until
                               ELSE greatest(k.closed_until, excluded.closed_until) END;
    -- A statement of its own: its snapshot sees every waiter a claim registered while it held
    -- these keys, since the upsert above waited for it.
    WITH targets AS (
        SELECT DISTINCT w.queue, w.priority, w.grp
          FROM {schema}.limit_waiters AS w
          JOIN unnest(t_q, t_k, t_n) AS u (queue, key, n) ON w.queue = u.queue AND w.key = u.key
         WHERE u.n > 0
    ), locked AS (
        SELECT g.queue, g.priority, g.grp
          FROM {schema}.limit_groups AS g
          JOIN targets AS t ON g.queue = t.queue AND g.priority = t.priority AND g.grp = t.grp
         ORDER BY g.queue, g.priority, g.grp
           FOR UPDATE OF g SKIP LOCKED
    ), ready AS (
        UPDATE {schema}.limit_groups AS g SET ready_at = least(g.ready_at, clock)
          FROM locked AS l
         WHERE g.queue = l.queue AND g.priority = l.priority AND g.grp = l.grp
        RETURNING g.queue, g.priority, g.grp
    ), unwaited AS (
        DELETE FROM {schema}.limit_waiters AS w USING ready AS r
         WHERE w.queue = r.queue AND w.priority = r.priority AND w.grp = r.grp
    )
    SELECT array_agg(DISTINCT r.queue) INTO woken FROM ready AS r;
    PERFORM pg_notify(channel, q) FROM unnest(woken) AS q ORDER BY q;
    RETURN cardinality(t_q);
END
$fn$;
-- Before outcomes that settle in several statements of one transaction (those with effects):
-- lock, in the claims' order, the group rows they may put jobs back into and then the limit keys
-- whose slots they free or which they close, so that no later statement of the transaction
-- waits for a group while holding a key, nor takes keys out of order.
CREATE FUNCTION {schema}.lock_settling(
    ids text[], tokens bigint[], kinds text[], e_queues text[], e_prios integer[], e_grps text[],
    e_rules jsonb[]
) RETURNS integer
LANGUAGE plpgsql AS $fn$
BEGIN
    -- The groups the transaction may put jobs into (those of its retried and throttled jobs and
    -- of its follow-up enqueues, e_*), made where missing (ready at +infinity until a job comes)
    -- and locked, in (queue, priority, grp) order: no later statement then waits for a group
    -- row while holding a key, which a claim holding that group and waiting for the key would
    -- make a deadlock.
    INSERT INTO {schema}.limit_groups AS g (queue, priority, grp, rules, turn, ready_at)
    SELECT m.queue, m.priority, m.grp, (array_agg(m.rules))[1], 0, 'infinity'
      FROM (SELECT j.queue, j.priority, j.grp, j.rules FROM {schema}.jobs AS j
              JOIN unnest(ids, tokens, kinds) AS o (id, token, kind) ON j.id = o.id AND j.token = o.token
             WHERE j.state = 'running' AND j.grp IS NOT NULL AND o.kind IN ('retry', 'throttled')
            UNION ALL
            SELECT e.queue, e.priority, e.grp, e.rules
              FROM unnest(e_queues, e_prios, e_grps, e_rules) AS e (queue, priority, grp, rules)
             WHERE e.grp IS NOT NULL) AS m
     GROUP BY m.queue, m.priority, m.grp
     ORDER BY m.queue, m.priority, m.grp
        ON CONFLICT (queue, priority, grp) DO UPDATE SET turn = g.turn;
    -- Then the keys whose slots it frees or which it closes (made where missing, like the
    -- groups), in (queue, key) order.
    INSERT INTO {schema}.limit_keys AS k (queue, key)
    SELECT m.queue, m.key
      FROM (SELECT j.queue, h.key, false AS closes FROM {schema}.jobs AS j
              JOIN unnest(ids, tokens) AS o (id, token) ON j.id = o.id AND j.token = o.token
             CROSS JOIN LATERAL jsonb_array_elements_text(
                   CASE WHEN jsonb_typeof(j.held) = 'array' THEN j.held ELSE '[]' END) AS h (key)
             WHERE j.state = 'running'
            UNION ALL
            SELECT j.queue, x.key, true FROM {schema}.jobs AS j
              JOIN unnest(ids, tokens, kinds) AS o (id, token, kind) ON j.id = o.id AND j.token = o.token
             CROSS JOIN LATERAL unnest(string_to_array(j.grp, chr(31))) AS x (key)
             WHERE j.state = 'running' AND o.kind = 'throttled') AS m
     GROUP BY m.queue, m.key
    HAVING bool_or(m.closes) OR EXISTS (SELECT 1 FROM {schema}.limit_keys AS k2
                                         WHERE k2.queue = m.queue AND k2.key = m.key)
     ORDER BY m.queue, m.key
        ON CONFLICT (queue, key) DO UPDATE SET tat = k.tat;
    RETURN 0;
END
$fn$;
-- Version 7's, for workers of that version: no follow-up enqueues.
CREATE FUNCTION {schema}.lock_settling(ids text[], tokens bigint[], kinds text[]) RETURNS integer
LANGUAGE sql AS $fn$
    SELECT {schema}.lock_settling(ids, tokens, kinds, '{}', '{}', '{}', '{}')
$fn$;
-- The claim of a reservation from queues with limits (docs/flow-control.md), called by reserve.
-- The split across levels and the deal across queues are reserve's (Fairness), on the due jobs
-- of the groups that may run (ready_at <= now) and the jobs without limits; each share is then
-- taken by round robin over the candidate groups of its (queue, level) in turn order, one job
-- per group per pass, oldest due first, while every key of the group (and the queue's own limit)
-- allows it: a concurrency slot free, a bucket token, not closed. A share that limits cut short
-- leaves its room to the other shares (after them, outside the fair split). Locks: the candidate
-- group rows SKIP LOCKED (concurrent claimers serve different groups), then every limit key they
-- name, in (queue, key) order, so claimers sharing a key take turns on it and never deadlock.
-- A group that cannot take gets ready_at = when it may (its keys' next token, a throttle's end,
-- or +infinity and a waiter row per full concurrency key); one without a due job, its next due
-- time, or its row is deleted.
CREATE FUNCTION {schema}.reserve_limited(
    queues text[], weights integer[], fair integer[], qweights integer[], qfair integer[],
    in_order boolean, lim integer, lease double precision, worker_id text, clock double precision
) RETURNS TABLE (r_id text, r_task text, r_queue text, r_priority integer, r_payload bytea,
                 r_attempt integer, r_max_attempts integer, r_token bigint,
                 r_run_at double precision, r_enqueued_at double precision, r_key text,
                 r_fair integer[], r_qfair integer[], r_throttled integer,
                 r_limited boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
    levels  integer := coalesce(array_length(weights, 1), 0);
    nq      integer := coalesce(array_length(queues, 1), 0);
    stored  integer[];
    ns      integer;
    ready   integer[];
    want    integer[];
    took    integer[];
    avail   integer[];
    lft     integer[] := array_fill(0, ARRAY[levels]);
    take    integer[] := array_fill(0, ARRAY[levels]);
    cur     integer[] := fair;
    qcur    integer[] := qfair;
    got     integer[];
    total   integer;
    best    integer;
    n       integer;
    k       integer;
    lv      integer;
    -- candidate groups, by (queue, level) slot then turn
    c_sq    integer[];
    c_grp   text[];
    c_rules jsonb[];
    c_turn  bigint[];
    c_state integer[];  -- 0 untouched, 1 served, 2 blocked, 3 no due job
    c_at    double precision[];
    c_first integer[];  -- its rules in the r_ arrays: first index, count
    c_count integer[];
    maxturn bigint[];
    -- rules of the candidates, flattened: the key's index in the k_ arrays and the declared rule
    r_idx   integer[] := '{}';
    r_key   text[] := '{}';
    r_rate  double precision[] := '{}';
    r_burst integer[] := '{}';
    r_conc  integer[] := '{}';
    -- the locked limit keys
    k_q     text[];
    k_key   text[];
    k_tat   double precision[];
    k_run   integer[];
    k_shut  double precision[];
    k_orate double precision[];
    k_oburst integer[];
    k_oconc integer[];
    k_dirty boolean[];
    qkey    integer[];      -- per queue: its own limit's index in the k_ arrays, or 0
    waits_q text[] := '{}';
    waits_k text[] := '{}';
    waits_s integer[] := '{}';
    waits_g text[] := '{}';
    chosen  text[] := '{}';
    helds   jsonb[] := '{}';
    pool    text[] := '{}';  -- due jobs locked per candidate: c_pos .. c_end, c_dry if no more
    fetched text[];
    c_pos   integer[];
    c_end   integer[];
    c_dry   boolean[];
    p_of    integer[];
    r_of    integer[];
    ncand   integer[];
    held    jsonb;
    job     text;
    sq      integer;
    q       integer;
    s       integer;
    kname   text;
    x       integer;
    t       integer;
    allowed boolean;
    blocked_at double precision;
    rate    double precision;
    burst   integer;
    conc    integer;
    spare   integer;
    taken   integer := 0;
    progress boolean;
    -- Fast path, per candidate: none of its keys can refuse a start within this claim (each
    -- open, with a slot and a token for every one of the lim jobs the claim may take), so its
    -- jobs are taken without the checks, and its keys charged once per share (a start moves a
    -- bucket's tat 1 / rate from max(tat, now) and takes a slot, in whatever order: the sum
    -- is the same).
    fast    boolean := false;  -- any candidate on the fast path
    c_fast  boolean[];
    k_ok    boolean[];
    c_took  integer[];     -- fast path: jobs taken per candidate in the current share
    c_held  jsonb[];       -- fast path: the slots a job of the candidate holds (NULL: none)
BEGIN
    -- The stored levels served: the worker's, then any above them with pending jobs.
    stored := ARRAY(SELECT generate_series(0, levels - 1)) || ARRAY(
        SELECT DISTINCT p FROM (
            SELECT g.priority AS p FROM {schema}.limit_groups AS g
             WHERE g.queue = ANY (queues) AND g.priority >= levels AND g.grp <> ''
            UNION ALL
            SELECT j2.priority FROM {schema}.jobs AS j2
             WHERE j2.state = 'pending' AND j2.grp IS NULL AND j2.queue = ANY (queues)
               AND j2.priority >= levels) AS above
         ORDER BY p);
    ns := cardinality(stored);
    -- Due jobs each (queue, level) could give (capped at lim): its due jobs without limits and
    -- those of its groups that may run.
    SELECT array_agg(c.n ORDER BY w.ord) INTO ready
      FROM generate_series(0, ns * nq - 1) AS w (ord)
     CROSS JOIN LATERAL (
           SELECT count(*)::integer AS n FROM (
               (SELECT 1 FROM {schema}.jobs AS j2
                 WHERE j2.state = 'pending' AND j2.grp IS NULL AND j2.queue = queues[w.ord % nq + 1]
                   AND j2.priority = stored[w.ord / nq + 1] AND j2.run_at <= clock
                 LIMIT lim)
               UNION ALL
               (SELECT 1 FROM {schema}.limit_groups AS g
                 CROSS JOIN LATERAL (
                       SELECT 1 FROM {schema}.jobs AS j2
                        WHERE j2.state = 'pending' AND j2.grp = g.grp AND j2.queue = g.queue
                          AND j2.priority = g.priority AND j2.run_at <= clock
                        LIMIT lim) AS due
                 WHERE g.queue = queues[w.ord % nq + 1] AND g.priority = stored[w.ord / nq + 1]
                   AND g.grp <> '' AND g.ready_at <= clock
                 LIMIT lim)
               LIMIT lim) AS capped) AS c;
    want := array_fill(0, ARRAY[ns * nq]);
    took := array_fill(0, ARRAY[ns * nq]);
    -- The split across levels (Fairness.split) and each level's deal across queues
    -- (Fairness.deal), as in reserve.
    FOR s2 IN 1 .. ns LOOP
        lv := least(s2, levels);
        FOR q2 IN 1 .. nq LOOP
            lft[lv] := lft[lv] + ready[(s2 - 1) * nq + q2];
        END LOOP;
    END LOOP;
    FOR step IN 1 .. lim LOOP
        total := 0;
        best := 0;
        FOR l IN 1 .. levels LOOP
            IF lft[l] <= 0 THEN
                cur[l] := 0;
                CONTINUE;
            END IF;
            cur[l] := cur[l] + weights[l];
            total := total + weights[l];
            IF best = 0 OR cur[l] > cur[best] THEN
                best := l;
            END IF;
        END LOOP;
        EXIT WHEN best = 0;
        cur[best] := cur[best] - total;
        take[best] := take[best] + 1;
        lft[best] := lft[best] - 1;
    END LOOP;
    FOR l IN 1 .. levels LOOP
        n := take[l];
        CONTINUE WHEN n = 0;
        avail := array_fill(0, ARRAY[nq]);
        got := array_fill(0, ARRAY[nq]);
        FOR s2 IN l .. (CASE WHEN l = levels THEN ns ELSE l END) LOOP
            FOR q2 IN 1 .. nq LOOP
                avail[q2] := avail[q2] + ready[(s2 - 1) * nq + q2];
            END LOOP;
        END LOOP;
        IF in_order OR nq = 1 THEN
            FOR q2 IN 1 .. nq LOOP
                got[q2] := least(n, avail[q2]);
                n := n - got[q2];
            END LOOP;
        ELSE
            FOR step IN 1 .. n LOOP
                total := 0;
                best := 0;
                FOR q2 IN 1 .. nq LOOP
                    k := (l - 1) * nq + q2;
                    IF avail[q2] - got[q2] <= 0 THEN
                        qcur[k] := 0;
                        CONTINUE;
                    END IF;
                    qcur[k] := qcur[k] + qweights[q2];
                    total := total + qweights[q2];
                    IF best = 0 OR qcur[k] > qcur[(l - 1) * nq + best] THEN
                        best := q2;
                    END IF;
                END LOOP;
                EXIT WHEN best = 0;
                qcur[(l - 1) * nq + best] := qcur[(l - 1) * nq + best] - total;
                got[best] := got[best] + 1;
            END LOOP;
        END IF;
        FOR s2 IN l .. (CASE WHEN l = levels THEN ns ELSE l END) LOOP
            FOR q2 IN 1 .. nq LOOP
                k := least(got[q2], ready[(s2 - 1) * nq + q2]);
                want[(s2 - 1) * nq + q2] := k;
                got[q2] := got[q2] - k;
            END LOOP;
        END LOOP;
    END LOOP;
    -- The jobs without limits take turns as a group of their own ('').
    INSERT INTO {schema}.limit_groups (queue, priority, grp, rules, turn, ready_at)
    SELECT queues[w.ord % nq + 1], stored[w.ord / nq + 1], '', NULL, 0, 0
      FROM generate_series(0, ns * nq - 1) AS w (ord)
     WHERE ready[w.ord + 1] > 0
       AND EXISTS (SELECT 1 FROM {schema}.jobs AS j2
                    WHERE j2.state = 'pending' AND j2.grp IS NULL AND j2.queue = queues[w.ord % nq + 1]
                      AND j2.priority = stored[w.ord / nq + 1] AND j2.run_at <= clock)
     ORDER BY 1, 2
        ON CONFLICT (queue, priority, grp) DO NOTHING;
    -- Lock the candidate groups of every (queue, level) that has due work, in turn order.
    -- (and each (queue, level)'s highest turn, in the same statement).
    SELECT c.sqs, c.grps, c.rules, c.turns, m.turns INTO c_sq, c_grp, c_rules, c_turn, maxturn
      FROM (SELECT array_agg(c.sq ORDER BY c.sq, c.turn, c.grp) AS sqs,
                   array_agg(c.grp ORDER BY c.sq, c.turn, c.grp) AS grps,
                   array_agg(c.rules ORDER BY c.sq, c.turn, c.grp) AS rules,
                   array_agg(c.turn ORDER BY c.sq, c.turn, c.grp) AS turns
              FROM generate_series(0, ns * nq - 1) AS w (ord)
             CROSS JOIN LATERAL (
                   SELECT w.ord + 1 AS sq, g.grp, g.rules, g.turn FROM {schema}.limit_groups AS g
                    WHERE g.queue = queues[w.ord % nq + 1] AND g.priority = stored[w.ord / nq + 1]
                      AND g.ready_at <= clock
                    ORDER BY g.turn, g.grp
                    LIMIT lim + 4
                      FOR UPDATE SKIP LOCKED) AS c
             WHERE ready[w.ord + 1] > 0) AS c,
           (SELECT array_agg(coalesce(m.turn, 0) ORDER BY w.ord) AS turns
              FROM generate_series(0, ns * nq - 1) AS w (ord)
             CROSS JOIN LATERAL (
                   SELECT max(g.turn) AS turn FROM {schema}.limit_groups AS g
                    WHERE g.queue = queues[w.ord % nq + 1] AND g.priority = stored[w.ord / nq + 1]) AS m) AS m;
    n := coalesce(cardinality(c_sq), 0);
    IF n > 0 THEN
        -- The candidates' rules, flattened: candidate, key, declared rule.
        SELECT coalesce(array_agg(c.ord::integer ORDER BY c.ord, r.n), '{}'),
               coalesce(array_agg(r.key ORDER BY c.ord, r.n), '{}'),
               coalesce(array_agg(r.rate ORDER BY c.ord, r.n), '{}'),
               coalesce(array_agg(r.burst ORDER BY c.ord, r.n), '{}'),
               coalesce(array_agg(r.concurrency ORDER BY c.ord, r.n), '{}')
          INTO r_of, r_key, r_rate, r_burst, r_conc
          FROM unnest(c_sq, c_rules) WITH ORDINALITY AS c (sq, rules, ord)
         CROSS JOIN LATERAL (
               -- limit_rules, written out: a set-returning SQL function WITH ORDINALITY is not
               -- inlined, and planning it again on every claim cost more than the rest of this
               -- statement.
               SELECT e.r ->> 0 AS key, (e.r ->> 1)::double precision AS rate,
                      least(greatest((e.r ->> 2)::numeric, 1), 1000000000)::integer AS burst,
                      least(greatest((e.r ->> 3)::numeric, 0), 1000000000)::integer AS concurrency, e.n
                 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(c.rules) = 'array' THEN c.rules ELSE '[]' END)
                      WITH ORDINALITY AS e (r, n)
                WHERE CASE WHEN jsonb_typeof(e.r) = 'array' AND jsonb_array_length(e.r) = 4
                           THEN jsonb_typeof(e.r -> 0) = 'string' AND jsonb_typeof(e.r -> 1) = 'number'
                                AND jsonb_typeof(e.r -> 2) = 'number' AND jsonb_typeof(e.r -> 3) = 'number'
                           ELSE false END) AS r
         WHERE r.key <> '';
        -- Every limit key they name (declared keys get a row) and each queue's own (if it has a
        -- row), locked in (queue, key) order and read, in one statement: an upsert locks a row
        -- it finds, and makes one again if the expiry sweep deleted it (at rest) meanwhile.
        WITH wanted AS (
            SELECT queues[(c_sq[u.o] - 1) % nq + 1] AS queue, u.k AS key FROM unnest(r_of, r_key) AS u (o, k)
            UNION
            SELECT l2.queue, l2.key FROM {schema}.limit_keys AS l2
             WHERE l2.key = '' AND l2.queue IN (SELECT queues[(c.sq - 1) % nq + 1] FROM unnest(c_sq) AS c (sq))
        ), locked AS (
            INSERT INTO {schema}.limit_keys AS l2 (queue, key)
            SELECT wanted.queue, wanted.key FROM wanted ORDER BY 1, 2
                ON CONFLICT (queue, key) DO UPDATE SET tat = l2.tat
            RETURNING l2.queue, l2.key, l2.tat, l2.running, l2.closed_until, l2.rate, l2.burst, l2.concurrency
        ), placed AS (
            SELECT l.*, row_number() OVER (ORDER BY l.queue, l.key) AS idx FROM locked AS l
        )
        SELECT array_agg(k2.queue ORDER BY k2.idx), array_agg(k2.key ORDER BY k2.idx),
               array_agg(k2.tat ORDER BY k2.idx), array_agg(k2.running ORDER BY k2.idx),
               array_agg(k2.closed_until ORDER BY k2.idx),
               array_agg(k2.rate ORDER BY k2.idx), array_agg(k2.burst ORDER BY k2.idx),
               array_agg(k2.concurrency ORDER BY k2.idx),
               -- each rule's key as its place in the k_ arrays (0: not found, which cannot happen)
               (SELECT coalesce(array_agg(coalesce(kk.idx::integer, 0) ORDER BY u.e), '{}')
                  FROM unnest(r_of, r_key) WITH ORDINALITY AS u (o, k, e)
                  LEFT JOIN placed AS kk ON kk.queue = queues[(c_sq[u.o] - 1) % nq + 1] AND kk.key = u.k)
          INTO k_q, k_key, k_tat, k_run, k_shut, k_orate, k_oburst, k_oconc, r_idx
          FROM placed AS k2;
        k_dirty := array_fill(false, ARRAY[coalesce(cardinality(k_q), 0) + 1]);
        qkey := array_fill(0, ARRAY[nq]);
        FOR x2 IN 1 .. coalesce(cardinality(k_q), 0) LOOP
            IF k_key[x2] = '' AND (k_orate[x2] IS NOT NULL OR k_oconc[x2] IS NOT NULL) THEN
                qkey[array_position(queues, k_q[x2])] := x2;
            END IF;
        END LOOP;
        c_state := array_fill(0, ARRAY[n]);
        c_at := array_fill(NULL::double precision, ARRAY[n]);
        c_first := array_fill(0, ARRAY[n]);
        c_count := array_fill(0, ARRAY[n]);
        c_pos := array_fill(1, ARRAY[n]);
        c_end := array_fill(0, ARRAY[n]);
        c_dry := array_fill(false, ARRAY[n]);
        FOR e IN 1 .. cardinality(r_of) LOOP
            IF c_count[r_of[e]] = 0 THEN
                c_first[r_of[e]] := e;
            END IF;
            c_count[r_of[e]] := c_count[r_of[e]] + 1;
        END LOOP;
        -- A key may take the fast path if every rule naming it leaves room for lim starts;
        -- a candidate, if all its keys may.
        k_ok := array_fill(true, ARRAY[coalesce(cardinality(k_q), 0) + 1]);
        FOR e IN 1 .. cardinality(r_of) LOOP
            x := r_idx[e];
            CONTINUE WHEN x = 0;
            k := r_of[e];
            IF k_orate[x] IS NOT NULL OR k_oconc[x] IS NOT NULL THEN
                rate := coalesce(k_orate[x], 0);
                burst := coalesce(k_oburst[x], 1);
                conc := coalesce(k_oconc[x], 0);
            ELSE
                rate := r_rate[e];
                burst := r_burst[e];
                conc := r_conc[e];
            END IF;
            IF k_shut[x] > clock OR (conc > 0 AND k_run[x] + lim > conc)
               OR (rate > 0 AND floor(burst - greatest(0, k_tat[x] - clock) * rate + 1e-9) < lim)
               OR x = ANY (r_idx[c_first[k] : e - 1]) THEN  -- (a key named twice by a group)
                k_ok[x] := false;
            END IF;
        END LOOP;
        c_fast := array_fill(true, ARRAY[n]);
        c_took := array_fill(0, ARRAY[n]);
        c_held := array_fill(NULL::jsonb, ARRAY[n]);
        FOR c IN 1 .. n LOOP
            held := '[]';
            FOR e IN c_first[c] .. c_first[c] + c_count[c] - 1 LOOP
                x := r_idx[e];
                CONTINUE WHEN x = 0;
                IF NOT k_ok[x] THEN
                    c_fast[c] := false;
                END IF;
                IF k_orate[x] IS NOT NULL OR k_oconc[x] IS NOT NULL THEN
                    conc := coalesce(k_oconc[x], 0);
                ELSE
                    conc := r_conc[e];
                END IF;
                IF conc > 0 THEN
                    held := held || to_jsonb(k_key[x]);
                END IF;
            END LOOP;
            x := qkey[(c_sq[c] - 1) % nq + 1];
            IF x > 0 AND coalesce(k_oconc[x], 0) > 0 THEN
                held := held || to_jsonb(''::text);
            END IF;
            IF jsonb_array_length(held) > 0 THEN
                c_held[c] := held;
            END IF;
            fast := fast OR c_fast[c];
        END LOOP;
        -- Lock each candidate's first due jobs, as many as its part of its share, in one
        -- statement (a group that runs out before the end fetches more below).
        ncand := array_fill(0, ARRAY[ns * nq]);
        FOR c IN 1 .. n LOOP
            ncand[c_sq[c]] := ncand[c_sq[c]] + 1;
        END LOOP;
        SELECT coalesce(array_agg(f.ord ORDER BY f.ord, f.run_at, f.seq), '{}'),
               coalesce(array_agg(f.id ORDER BY f.ord, f.run_at, f.seq), '{}')
          INTO p_of, pool
          FROM (SELECT c.ord::integer AS ord, d.id, d.run_at, d.seq
                  FROM unnest(c_sq, c_grp) WITH ORDINALITY AS c (sq, grp, ord)
                 CROSS JOIN LATERAL (
                       SELECT j2.id, j2.run_at, j2.seq FROM {schema}.jobs AS j2
                        WHERE j2.state = 'pending' AND j2.grp = c.grp
                          AND j2.queue = queues[(c.sq - 1) % nq + 1]
                          AND j2.priority = stored[(c.sq - 1) / nq + 1] AND j2.run_at <= clock
                        ORDER BY j2.run_at, j2.seq
                        LIMIT least(want[c.sq], want[c.sq] / ncand[c.sq] + 1)
                          FOR UPDATE SKIP LOCKED) AS d
                 WHERE c.grp <> '' AND want[c.sq] > 0
                UNION ALL
                SELECT c.ord::integer, d.id, d.run_at, d.seq
                  FROM unnest(c_sq, c_grp) WITH ORDINALITY AS c (sq, grp, ord)
                 CROSS JOIN LATERAL (
                       SELECT j2.id, j2.run_at, j2.seq FROM {schema}.jobs AS j2
                        WHERE j2.state = 'pending' AND j2.grp IS NULL
                          AND j2.queue = queues[(c.sq - 1) % nq + 1]
                          AND j2.priority = stored[(c.sq - 1) / nq + 1] AND j2.run_at <= clock
                        ORDER BY j2.run_at, j2.seq
                        LIMIT least(want[c.sq], want[c.sq] / ncand[c.sq] + 1)
                          FOR UPDATE SKIP LOCKED) AS d
                 WHERE c.grp = '' AND want[c.sq] > 0) AS f;
        FOR e IN 1 .. cardinality(p_of) LOOP
            IF c_end[p_of[e]] = 0 THEN
                c_pos[p_of[e]] := e;
            END IF;
            c_end[p_of[e]] := e;
        END LOOP;
        FOR c IN 1 .. n LOOP
            IF want[c_sq[c]] > 0 THEN
                c_dry[c] := c_end[c] - c_pos[c] + 1 < least(want[c_sq[c]], want[c_sq[c]] / ncand[c_sq[c]] + 1);
            END IF;
        END LOOP;
    END IF;
    -- Take each share, then (second pass) what shares cut short left, by round robin.
    FOR phase IN 1 .. 2 LOOP
        EXIT WHEN n = 0;
        IF phase = 2 THEN
            spare := lim - taken;
            EXIT WHEN spare <= 0;
        END IF;
        FOR sq2 IN 1 .. ns * nq LOOP
            sq := sq2;
            IF phase = 1 THEN
                t := want[sq];
            ELSE
                t := CASE WHEN took[sq] >= want[sq] AND ready[sq] > took[sq] THEN lim - taken ELSE 0 END;
            END IF;
            CONTINUE WHEN t <= 0;
            q := (sq - 1) % nq + 1;
            s := (sq - 1) / nq + 1;
            -- The queue's own limit caps the share.
            x := qkey[q];
            IF x > 0 THEN
                IF k_shut[x] > clock THEN
                    t := 0;
                END IF;
                IF coalesce(k_oconc[x], 0) > 0 THEN
                    t := least(t, k_oconc[x] - k_run[x]);
                END IF;
                IF coalesce(k_orate[x], 0) > 0 THEN
                    t := least(t, floor(coalesce(k_oburst[x], 1)
                                        - greatest(0, k_tat[x] - clock) * k_orate[x] + 1e-9)::integer);
                END IF;
            END IF;
            CONTINUE WHEN t <= 0;
            LOOP
                progress := false;
                FOR c IN 1 .. n LOOP
                    EXIT WHEN t <= 0;
                    CONTINUE WHEN c_sq[c] <> sq OR c_state[c] >= 2;
                    -- May every key of the group start one more now?
                    allowed := true;
                    blocked_at := clock;
                    held := '[]';
                    FOR e IN c_first[c] .. c_first[c] + c_count[c] - 1 LOOP
                        EXIT WHEN c_fast[c];
                        x := r_idx[e];
                        CONTINUE WHEN x = 0;
                        IF k_orate[x] IS NOT NULL OR k_oconc[x] IS NOT NULL THEN
                            rate := coalesce(k_orate[x], 0);
                            burst := coalesce(k_oburst[x], 1);
                            conc := coalesce(k_oconc[x], 0);
                        ELSE
                            rate := r_rate[e];
                            burst := r_burst[e];
                            conc := r_conc[e];
                        END IF;
                        IF k_shut[x] > clock THEN
                            allowed := false;
                            blocked_at := greatest(blocked_at, k_shut[x]);
                        END IF;
                        IF conc > 0 AND k_run[x] >= conc THEN
                            allowed := false;
                            blocked_at := 'infinity';
                            waits_q := waits_q || k_q[x];
                            waits_k := waits_k || k_key[x];
                            waits_s := waits_s || stored[s];
                            waits_g := waits_g || c_grp[c];
                        END IF;
                        IF rate > 0 AND floor(burst - greatest(0, k_tat[x] - clock) * rate + 1e-9) < 1 THEN
                            allowed := false;
                            blocked_at := greatest(blocked_at, k_tat[x] - (burst - 1) / rate);
                        END IF;
                    END LOOP;
                    IF NOT allowed THEN
                        c_state[c] := 2;
                        c_at[c] := blocked_at;
                        CONTINUE;
                    END IF;
                    IF c_pos[c] > c_end[c] THEN
                        IF c_dry[c] THEN
                            c_state[c] := 3;
                            CONTINUE;
                        END IF;
                        -- Lock the group's next due jobs, as many as its share of what is left.
                        k := 0;
                        FOR c2 IN 1 .. n LOOP
                            IF c_sq[c2] = sq AND c_state[c2] < 2 THEN
                                k := k + 1;
                            END IF;
                        END LOOP;
                        k := least(t, t / greatest(k, 1) + 1);
                        IF c_grp[c] = '' THEN
                            SELECT coalesce(array_agg(f.id ORDER BY f.run_at, f.seq), '{}') INTO fetched
                              FROM (SELECT j2.id, j2.run_at, j2.seq FROM {schema}.jobs AS j2
                                     WHERE j2.state = 'pending' AND j2.grp IS NULL AND j2.queue = queues[q]
                                       AND j2.priority = stored[s] AND j2.run_at <= clock
                                       AND j2.id <> ALL (chosen)
                                     ORDER BY j2.run_at, j2.seq
                                     LIMIT k
                                       FOR UPDATE SKIP LOCKED) AS f;
                        ELSE
                            SELECT coalesce(array_agg(f.id ORDER BY f.run_at, f.seq), '{}') INTO fetched
                              FROM (SELECT j2.id, j2.run_at, j2.seq FROM {schema}.jobs AS j2
                                     WHERE j2.state = 'pending' AND j2.grp = c_grp[c] AND j2.queue = queues[q]
                                       AND j2.priority = stored[s] AND j2.run_at <= clock
                                       AND j2.id <> ALL (chosen)
                                     ORDER BY j2.run_at, j2.seq
                                     LIMIT k
                                       FOR UPDATE SKIP LOCKED) AS f;
                        END IF;
                        c_dry[c] := cardinality(fetched) < k;
                        IF cardinality(fetched) = 0 THEN
                            c_state[c] := 3;
                            CONTINUE;
                        END IF;
                        c_pos[c] := cardinality(pool) + 1;
                        pool := pool || fetched;
                        c_end[c] := cardinality(pool);
                    END IF;
                    job := pool[c_pos[c]];
                    c_pos[c] := c_pos[c] + 1;
                    IF c_fast[c] THEN  -- its keys are charged when the share is taken (below)
                        chosen := chosen || job;
                        helds := helds || c_held[c];
                        c_took[c] := c_took[c] + 1;
                        maxturn[sq] := maxturn[sq] + 1;
                        c_turn[c] := maxturn[sq];
                        c_state[c] := 1;
                        took[sq] := took[sq] + 1;
                        taken := taken + 1;
                        t := t - 1;
                        progress := true;
                        CONTINUE;
                    END IF;
                    -- Take it: a token of every rate, a slot of every concurrency.
                    FOR e IN c_first[c] .. c_first[c] + c_count[c] - 1 LOOP
                        x := r_idx[e];
                        CONTINUE WHEN x = 0;
                        IF k_orate[x] IS NOT NULL OR k_oconc[x] IS NOT NULL THEN
                            rate := coalesce(k_orate[x], 0);
                            conc := coalesce(k_oconc[x], 0);
                        ELSE
                            rate := r_rate[e];
                            conc := r_conc[e];
                        END IF;
                        IF rate > 0 THEN
                            k_tat[x] := greatest(k_tat[x], clock) + 1 / rate;
                            k_dirty[x] := true;
                        END IF;
                        IF conc > 0 THEN
                            k_run[x] := k_run[x] + 1;
                            k_dirty[x] := true;
                            held := held || to_jsonb(k_key[x]);
                        END IF;
                    END LOOP;
                    x := qkey[q];
                    IF x > 0 THEN
                        IF coalesce(k_orate[x], 0) > 0 THEN
                            k_tat[x] := greatest(k_tat[x], clock) + 1 / k_orate[x];
                            k_dirty[x] := true;
                        END IF;
                        IF coalesce(k_oconc[x], 0) > 0 THEN
                            k_run[x] := k_run[x] + 1;
                            k_dirty[x] := true;
                            held := held || to_jsonb(''::text);
                        END IF;
                    END IF;
                    chosen := chosen || job;
                    helds := helds || CASE WHEN jsonb_array_length(held) > 0 THEN held END;
                    maxturn[sq] := maxturn[sq] + 1;
                    c_turn[c] := maxturn[sq];
                    c_state[c] := 1;
                    took[sq] := took[sq] + 1;
                    taken := taken + 1;
                    t := t - 1;
                    progress := true;
                END LOOP;
                EXIT WHEN NOT progress OR t <= 0;
                -- Served groups stay candidates for the next pass.
            END LOOP;
            IF fast THEN
                -- The share's starts, charged as the slow path charges them one by one: a
                -- bucket's tat moves 1 / rate per start from max(tat, now), a slot per start.
                k := 0;
                FOR c IN 1 .. n LOOP
                    CONTINUE WHEN c_sq[c] <> sq OR c_took[c] = 0;
                    k := k + c_took[c];
                    FOR e IN c_first[c] .. c_first[c] + c_count[c] - 1 LOOP
                        x := r_idx[e];
                        CONTINUE WHEN x = 0;
                        IF k_orate[x] IS NOT NULL OR k_oconc[x] IS NOT NULL THEN
                            rate := coalesce(k_orate[x], 0);
                            conc := coalesce(k_oconc[x], 0);
                        ELSE
                            rate := r_rate[e];
                            conc := r_conc[e];
                        END IF;
                        IF rate > 0 THEN
                            k_tat[x] := greatest(k_tat[x], clock) + c_took[c] / rate;
                            k_dirty[x] := true;
                        END IF;
                        IF conc > 0 THEN
                            k_run[x] := k_run[x] + c_took[c];
                            k_dirty[x] := true;
                        END IF;
                    END LOOP;
                    c_took[c] := 0;
                END LOOP;
                x := qkey[q];
                IF x > 0 AND k > 0 THEN
                    IF coalesce(k_orate[x], 0) > 0 THEN
                        k_tat[x] := greatest(k_tat[x], clock) + k / k_orate[x];
                        k_dirty[x] := true;
                    END IF;
                    IF coalesce(k_oconc[x], 0) > 0 THEN
                        k_run[x] := k_run[x] + k;
                        k_dirty[x] := true;
                    END IF;
                END IF;
            END IF;
        END LOOP;
    END LOOP;
    IF n > 0 THEN
        -- In one statement: the keys' new state; the groups looked at (served ones take their
        -- new turn; blocked ones are ready when they may run; those found without a due job,
        -- and served ones whose locked due jobs were all taken, are ready at their next due
        -- time, of the jobs not taken now, so that wait does not take them for ready work;
        -- empty, a group found so is gone, and a served one is kept, ready at +infinity, for
        -- the outcomes of the jobs just taken to put back into: an idle group's row stays so,
        -- examined by no claim, until work comes back or the expiry sweep deletes it); the
        -- waiters; the jobs taken.
        RETURN QUERY
        WITH keyed AS (
            UPDATE {schema}.limit_keys AS l2
               SET tat = u.tat, running = u.running
              FROM unnest(k_q, k_key, k_tat, k_run, k_dirty[1 : cardinality(k_q)])
                   AS u (queue, key, tat, running, dirty)
             WHERE u.dirty AND l2.queue = u.queue AND l2.key = u.key
        ), looked AS (
            SELECT queues[(u.sq - 1) % nq + 1] AS queue, stored[(u.sq - 1) / nq + 1] AS priority, u.grp,
                   u.turn, u.state, u.at,
                   u.grp <> '' AND (u.state = 3 OR (u.state = 1 AND u.pos > u.fin)) AS drained
              FROM unnest(c_sq, c_grp, c_turn, c_state, c_at, c_pos, c_end) AS u (sq, grp, turn, state, at, pos, fin)
             WHERE u.state IN (1, 2, 3)
        ), settled AS (
            SELECT l.*,
                   CASE WHEN l.drained THEN (
                       SELECT min(j2.run_at) FROM {schema}.jobs AS j2
                        WHERE j2.state = 'pending' AND j2.grp = l.grp AND j2.queue = l.queue
                          AND j2.priority = l.priority AND j2.id <> ALL (chosen)) END AS next_at
              FROM looked AS l
        ), gone AS (
            DELETE FROM {schema}.limit_groups AS g USING settled AS s
             WHERE s.drained AND s.state = 3 AND s.next_at IS NULL
               AND g.queue = s.queue AND g.priority = s.priority AND g.grp = s.grp
        ), regrouped AS (
            UPDATE {schema}.limit_groups AS g
               SET turn = s.turn,
                   ready_at = CASE WHEN s.drained THEN coalesce(s.next_at, 'infinity')
                                   WHEN s.state = 2 THEN s.at ELSE g.ready_at END
              FROM settled AS s
             WHERE (s.state IN (1, 2) OR s.drained) AND NOT (s.drained AND s.state = 3 AND s.next_at IS NULL)
               AND g.queue = s.queue AND g.priority = s.priority AND g.grp = s.grp
        ), waiting AS (
            INSERT INTO {schema}.limit_waiters (queue, key, priority, grp)
            SELECT DISTINCT * FROM unnest(waits_q, waits_k, waits_s, waits_g)
             ORDER BY 1, 2, 3, 4
                ON CONFLICT DO NOTHING
        )
        UPDATE {schema}.jobs AS j
           SET state = 'running',
               -- Saturated: a stored maximum (a corrupt row) must not fail the reservation.
               attempt = CASE WHEN j.attempt < 2147483647 THEN j.attempt + 1 ELSE j.attempt END,
               token = CASE WHEN j.token < 9223372036854775807 THEN j.token + 1 ELSE 0 END,
               lease_until = clock + lease, worker = worker_id, started_at = clock, held = picked.held
          FROM unnest(chosen, helds) AS picked (id, held)
         WHERE j.id = picked.id
        RETURNING j.id, j.task, j.queue, j.priority, j.payload, j.attempt, j.max_attempts, j.token,
                  j.run_at, j.enqueued_at, j.key, NULL::integer[], NULL::integer[], j.throttled,
                  j.grp IS NOT NULL OR j.held IS NOT NULL;
    END IF;
    RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, NULL::integer, NULL::bytea,
                        NULL::integer, NULL::integer, NULL::bigint, NULL::double precision,
                        NULL::double precision, NULL::text, cur, qcur, NULL::integer, NULL::boolean;
END
$fn$;
-- Paused queues (task '') and paused tasks of a queue: reserve_unpaused claims no job they cover.
CREATE TABLE {schema}.paused (
    queue text             NOT NULL,
    task  text             NOT NULL,
    since double precision NOT NULL,
    PRIMARY KEY (queue, task)
);
-- Due jobs of paused tasks that a reservation set aside ("parked": out of the claim index, so
-- later claims do not walk past them again); resume makes them pending again.
CREATE INDEX jobs_parked ON {schema}.jobs (queue, task) WHERE state = 'parked';
-- Reserve, minding pauses (docs/flow-control.md): the reserve function above, from the queues
-- not paused as a whole. The pauses of each queue are read under a shared advisory lock on it,
-- which pause takes exclusively before it returns: a reservation either sees the pause or
-- commits before pause returns. Of a queue with paused tasks, the due jobs of those tasks ahead
-- of the first lim others of each stored level (jobs without limits) and of each group that a
-- claim may look at (ready_at <= now: jobs with limits, claimed oldest due first per group) are
-- parked (the claim takes at most lim per level and per group), at most 1000 per call: a queue
-- whose heads are not clear within that sits the call out, and the next call parks on. The rows
-- looked at are locked as the claim's own walks lock them (FOR UPDATE SKIP LOCKED) and stay
-- locked by this transaction, so those walks meet them first. A group left with no due job is
-- the claim's to settle (its next due time, or its row deleted); resume puts its parked jobs
-- back into their groups.
CREATE FUNCTION {schema}.reserve_unpaused(
    queues text[], weights integer[], fair integer[], qweights integer[], qfair integer[],
    in_order boolean, lim integer, lease double precision, worker_id text, at double precision
) RETURNS TABLE (r_id text, r_task text, r_queue text, r_priority integer, r_payload bytea,
                 r_attempt integer, r_max_attempts integer, r_token bigint,
                 r_run_at double precision, r_enqueued_at double precision, r_key text,
                 r_fair integer[], r_qfair integer[], r_throttled integer, r_limited boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
    nq      integer := coalesce(array_length(queues, 1), 0);
    levels  integer := coalesce(array_length(weights, 1), 0);
    clock   double precision := coalesce(at, extract(epoch from now()));
    budget  integer := 1000;
    held    text[];
    parked  text[];
    lv      integer;
    free    integer;
    clear   boolean;
    open_i  integer[] := '{}';
    sub_q   text[] := '{}';
    sub_w   integer[] := '{}';
    sub_f   integer[] := '{}';
    merged  integer[];
    no      integer;
    k       integer;
    rec     record;
    c       record;
    g       record;
BEGIN
    -- In one global order (as the enqueue's key locks): a pause queued for one of them then
    -- never waits, through this reservation, for a reservation that waits for it.
    PERFORM pg_advisory_xact_lock_shared(h)
       FROM (SELECT DISTINCT hashtextextended('conveyor.pause' || chr(31) || '{schema}' || chr(31) || qn, 0)
                             AS h
               FROM unnest(queues) AS qn
              ORDER BY h) AS keyed;
    IF NOT EXISTS (SELECT 1 FROM {schema}.paused AS p WHERE p.queue = ANY (queues)) THEN
        RETURN QUERY SELECT * FROM {schema}.reserve(queues, weights, fair, qweights, qfair, in_order,
                                                    lim, lease, worker_id, at);
        RETURN;
    END IF;
    FOR q IN 1 .. nq LOOP
        SELECT array_agg(p.task) INTO held FROM {schema}.paused AS p WHERE p.queue = queues[q];
        CONTINUE WHEN '' = ANY (held);
        clear := true;
        IF held IS NOT NULL THEN
            lv := -1;
            LOOP
                SELECT min(j.priority) INTO lv FROM {schema}.jobs AS j
                 WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = queues[q] AND j.priority > lv;
                EXIT WHEN lv IS NULL;
                -- One walk of the level's due jobs, locking as it goes, until lim of them are
                -- of tasks not paused (the cursor stops there) or the budget is spent.
                parked := '{}';
                free := 0;
                FOR c IN SELECT j.id, j.task FROM {schema}.jobs AS j
                          WHERE j.state = 'pending' AND j.grp IS NULL AND j.queue = queues[q]
                            AND j.priority = lv AND j.run_at <= clock
                          ORDER BY j.run_at, j.seq
                          LIMIT lim + budget
                            FOR UPDATE SKIP LOCKED LOOP
                    IF c.task = ANY (held) THEN
                        parked := parked || c.id;
                        EXIT WHEN cardinality(parked) >= budget;
                    ELSE
                        free := free + 1;
                        EXIT WHEN free >= lim;
                    END IF;
                END LOOP;
                UPDATE {schema}.jobs AS j SET state = 'parked' WHERE j.id = ANY (parked);
                budget := budget - cardinality(parked);
                IF budget <= 0 THEN
                    clear := false;
                    EXIT;
                END IF;
            END LOOP;
            -- The same walk for each group a claim may look at (its due jobs, oldest first).
            FOR g IN SELECT lg.priority, lg.grp FROM {schema}.limit_groups AS lg
                      WHERE lg.queue = queues[q] AND lg.grp <> '' AND lg.ready_at <= clock
                      ORDER BY lg.priority, lg.grp LOOP
                EXIT WHEN NOT clear;
                parked := '{}';
                free := 0;
                FOR c IN SELECT j.id, j.task FROM {schema}.jobs AS j
                          WHERE j.state = 'pending' AND j.grp = g.grp AND j.queue = queues[q]
                            AND j.priority = g.priority AND j.run_at <= clock
                          ORDER BY j.run_at, j.seq
                          LIMIT lim + budget
                            FOR UPDATE SKIP LOCKED LOOP
                    IF c.task = ANY (held) THEN
                        parked := parked || c.id;
                        EXIT WHEN cardinality(parked) >= budget;
                    ELSE
                        free := free + 1;
                        EXIT WHEN free >= lim;
                    END IF;
                END LOOP;
                UPDATE {schema}.jobs AS j SET state = 'parked' WHERE j.id = ANY (parked);
                budget := budget - cardinality(parked);
                IF budget <= 0 THEN
                    clear := false;
                END IF;
            END LOOP;
        END IF;
        IF clear THEN
            open_i := open_i || q;
            sub_q := sub_q || queues[q];
            sub_w := sub_w || qweights[q];
        END IF;
    END LOOP;
    no := cardinality(open_i);
    IF no = 0 THEN  -- nothing due, as far as this worker may know: the levels' round robin resets
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, NULL::integer, NULL::bytea,
                            NULL::integer, NULL::integer, NULL::bigint, NULL::double precision,
                            NULL::double precision, NULL::text, array_fill(0, ARRAY[levels]), qfair,
                            NULL::integer, NULL::boolean;
        RETURN;
    END IF;
    FOR l IN 1 .. levels LOOP
        FOREACH k IN ARRAY open_i LOOP
            sub_f := sub_f || qfair[(l - 1) * nq + k];
        END LOOP;
    END LOOP;
    FOR rec IN SELECT * FROM {schema}.reserve(sub_q, weights, fair, sub_w, sub_f, in_order, lim, lease,
                                             worker_id, at) LOOP
        merged := rec.r_qfair;
        IF rec.r_fair IS NOT NULL THEN  -- the round robin's state, back in the caller's layout
            merged := qfair;
            FOR l IN 1 .. levels LOOP
                FOR j IN 1 .. no LOOP
                    merged[(l - 1) * nq + open_i[j]] := rec.r_qfair[(l - 1) * no + j];
                END LOOP;
            END LOOP;
        END IF;
        RETURN QUERY SELECT rec.r_id, rec.r_task, rec.r_queue, rec.r_priority, rec.r_payload,
                            rec.r_attempt, rec.r_max_attempts, rec.r_token, rec.r_run_at,
                            rec.r_enqueued_at, rec.r_key, rec.r_fair, merged, rec.r_throttled,
                            rec.r_limited;
    END LOOP;
END
$fn$;
