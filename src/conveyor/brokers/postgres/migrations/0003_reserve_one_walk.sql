-- Version 3: the reserve function walks each (queue, level) of the claim index once, not twice.
-- Version 2 counted the ready jobs, then claimed, and both walks read past the dead index entries
-- of every job claimed since the table's last vacuum; now one walk locks the candidates and
-- their number is the count. (Same signature and rows as version 2.)
-- Reserve in one round trip: lock up to the limit of due jobs of each (queue, level), oldest
-- first, which counts the ready ones as it holds them; split the reservation across the levels by
-- smooth weighted round robin (conveyor.priority.Fairness.split, from the worker's state in
-- "fair", which the last row hands back); deal each level's share to its queues round robin; and
-- claim the oldest candidates of each share. Candidates not taken are unlocked at commit,
-- untouched. The candidates are the broker's "candidates" statement; the split is the same
-- arithmetic as Fairness.split, step for step.
-- Rows: the claimed jobs (fair NULL), then one row with only fair: the worker's new state.
CREATE OR REPLACE FUNCTION {schema}.reserve(
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
    cand_k  integer[];  -- the locked candidates' (level, queue): (level * nq) + queue + 1
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
    -- Lock up to lim due jobs of each (queue, level), oldest first: one walk of each range,
    -- which both counts the ready jobs and holds them. Those not taken below are unlocked at
    -- commit, untouched.
    SELECT array_agg(w.ord + 1 ORDER BY w.ord, c.run_at, c.seq),
           array_agg(c.id ORDER BY w.ord, c.run_at, c.seq)
      INTO cand_k, cand_id
      FROM generate_series(0, levels * nq - 1) AS w (ord)
     CROSS JOIN LATERAL (
           SELECT j.id, j.run_at, j.seq FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue = queues[w.ord % nq + 1]
              AND j.priority = w.ord / nq AND j.run_at <= clock
            ORDER BY j.run_at, j.seq
            LIMIT lim
              FOR UPDATE SKIP LOCKED) AS c;
    FOR i IN 1 .. coalesce(array_length(cand_k, 1), 0) LOOP
        ready[cand_k[i]] := ready[cand_k[i]] + 1;
    END LOOP;
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
    -- Each (queue, level) takes its oldest candidates, as many as dealt to it.
    FOR i IN 1 .. coalesce(array_length(cand_k, 1), 0) LOOP
        k := cand_k[i];
        IF want[k] > 0 THEN
            chosen := chosen || cand_id[i];
            want[k] := want[k] - 1;
        END IF;
    END LOOP;
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
