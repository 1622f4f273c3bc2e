-- Version 1: the jobs table with its partial indexes, and the worker registry.
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
                 CHECK (state IN ('pending', 'running', 'succeeded', 'dead', 'cancelled')),
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
