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
    errors       jsonb            NOT NULL DEFAULT '[]'
);
-- Claim and the earliest due time: one range scan per (queue, priority), FIFO by due time.
CREATE INDEX jobs_claim ON {schema}.jobs (queue, priority, run_at, seq) WHERE state = 'pending';
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
                WHERE j.state = 'pending' AND j.queue = queues[1] AND j.priority = w.ord
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
                        WHERE j.state = 'pending' AND j.queue = queues[w.ord % nq + 1]
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
                WHERE j.state = 'pending' AND j.queue = queues[w.ord % nq + 1]
                  AND j.priority = w.ord / nq AND j.run_at <= clock
                ORDER BY j.run_at, j.seq
                LIMIT want[w.ord + 1]
                  FOR UPDATE SKIP LOCKED) AS c;
    END IF;
    IF cardinality(chosen) > 0 THEN
        RETURN QUERY
        UPDATE {schema}.jobs AS j
           SET state = 'running', attempt = j.attempt + 1, token = j.token + 1,
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
                 r_fair integer[], r_qfair integer[])
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
                WHERE j.state = 'pending' AND j.queue = queues[1] AND j.priority = w.ord
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
                        WHERE j.state = 'pending' AND j.queue = queues[w.ord % nq + 1]
                          AND j.priority = w.ord / nq AND j.run_at <= clock
                        LIMIT lim) AS capped) AS c;
    END IF;
    IF EXISTS (SELECT 1 FROM {schema}.jobs AS j
                WHERE j.state = 'pending' AND j.queue = ANY (queues) AND j.priority >= levels) THEN
        WITH RECURSIVE probe AS (
            SELECT q.queue, first.priority
              FROM unnest(queues) AS q (queue)
             CROSS JOIN LATERAL (
                   SELECT j.priority FROM {schema}.jobs AS j
                    WHERE j.state = 'pending' AND j.queue = q.queue AND j.priority >= levels
                    ORDER BY j.priority LIMIT 1) AS first
            UNION ALL
            SELECT probe.queue, next.priority
              FROM probe
             CROSS JOIN LATERAL (
                   SELECT j.priority FROM {schema}.jobs AS j
                    WHERE j.state = 'pending' AND j.queue = probe.queue AND j.priority > probe.priority
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
                    WHERE j.state = 'pending' AND j.queue = queues[1] AND j.priority = stored[w.ord + 1]
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
                            WHERE j.state = 'pending' AND j.queue = queues[w.ord % nq + 1]
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
                WHERE j.state = 'pending' AND j.queue = queues[w.ord % nq + 1]
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
               lease_until = clock + lease, worker = worker_id, started_at = clock
          FROM unnest(chosen) AS picked (id)
         WHERE j.id = picked.id
        RETURNING j.id, j.task, j.queue, j.priority, j.payload, j.attempt, j.max_attempts, j.token,
                  j.run_at, j.enqueued_at, j.key, NULL::integer[], NULL::integer[];
    END IF;
    RETURN QUERY SELECT NULL::text, NULL::text, NULL::text, NULL::integer, NULL::bytea,
                        NULL::integer, NULL::integer, NULL::bigint, NULL::double precision,
                        NULL::double precision, NULL::text, cur, qcur;
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
-- of the first lim others of each stored level are parked (the claim takes at most lim per
-- level), at most 1000 per call: a queue whose heads are not clear within that sits the call
-- out, and the next call parks on. The rows looked at are locked as the claim's own walk locks
-- them (FOR UPDATE SKIP LOCKED) and stay locked by this transaction, so that walk meets them
-- first.
CREATE FUNCTION {schema}.reserve_unpaused(
    queues text[], weights integer[], fair integer[], qweights integer[], qfair integer[],
    in_order boolean, lim integer, lease double precision, worker_id text, at double precision
) RETURNS TABLE (r_id text, r_task text, r_queue text, r_priority integer, r_payload bytea,
                 r_attempt integer, r_max_attempts integer, r_token bigint,
                 r_run_at double precision, r_enqueued_at double precision, r_key text,
                 r_fair integer[], r_qfair integer[])
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
                 WHERE j.state = 'pending' AND j.queue = queues[q] AND j.priority > lv;
                EXIT WHEN lv IS NULL;
                -- One walk of the level's due jobs, locking as it goes, until lim of them are
                -- of tasks not paused (the cursor stops there) or the budget is spent.
                parked := '{}';
                free := 0;
                FOR c IN SELECT j.id, j.task FROM {schema}.jobs AS j
                          WHERE j.state = 'pending' AND j.queue = queues[q] AND j.priority = lv
                            AND j.run_at <= clock
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
                            NULL::double precision, NULL::text, array_fill(0, ARRAY[levels]), qfair;
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
                            rec.r_enqueued_at, rec.r_key, rec.r_fair, merged;
    END LOOP;
END
$fn$;
