-- Pause and resume (docs/flow-control.md): the stored pauses, the parked state of jobs set
-- aside while their task is paused, and the reserve that minds both.
ALTER TABLE {schema}.jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE {schema}.jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('pending', 'parked', 'running', 'succeeded', 'dead', 'cancelled'));
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
-- Every reservation reads the pauses: roles granted rights on the jobs table get the same on the
-- pauses, so workers running with the grants documented before this version keep working.
DO $grants$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END AS who,
                    a.privilege_type AS what
               FROM pg_class AS c, aclexplode(c.relacl) AS a
              WHERE c.oid = '{schema}.jobs'::regclass AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON {schema}.paused TO %s', g.what, g.who);
    END LOOP;
END
$grants$;
