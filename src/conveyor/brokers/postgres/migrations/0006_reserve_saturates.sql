-- Version 5: the reserve function's claim saturates a job's attempt at the integer maximum and
-- wraps its token to 0 past the bigint maximum, where version 4 failed with "integer out of
-- range": one row holding a maximum (written by hand or by an attacker with write access) made
-- every reservation of its queue fail. Same signature: the function is replaced.
CREATE OR REPLACE FUNCTION {schema}.reserve(
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
