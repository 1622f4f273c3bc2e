-- Conveyor's embedded store. "pending" covers scheduled and ready: a pending job is ready
-- once run_at <= now, so no promotion step exists and the claim index serves both.
CREATE TABLE IF NOT EXISTS conveyor_jobs (
    id           TEXT    NOT NULL UNIQUE,
    task         TEXT    NOT NULL,
    queue        TEXT    NOT NULL,
    priority     INTEGER NOT NULL,
    state        TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    run_at       REAL    NOT NULL,
    enqueued_at  REAL    NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    token        INTEGER NOT NULL DEFAULT 0,
    lease_until  REAL,
    worker       TEXT,
    started_at   REAL,
    finished_at  REAL,
    expires_at   REAL,
    key          TEXT,
    result       BLOB,
    errors       TEXT    NOT NULL DEFAULT '[]',
    -- Limits (docs/flow-control.md): the job's group (its limit keys joined by U+001F, NULL
    -- without limits), its throttles, and while running the keys whose slots it holds (JSON).
    grp          TEXT,
    throttled    INTEGER NOT NULL DEFAULT 0,
    held         TEXT,
    -- Job control (docs/job-control.md): a cancel request holds for the run whose token it
    -- names (cancel_token), with its grace, and snoozes counts the job's snoozes.
    cancel_token INTEGER,
    cancel_grace REAL,
    snoozes      INTEGER NOT NULL DEFAULT 0,
    -- Job headers (docs/hooks.md): JSON object of str to str, NULL without any.
    headers      TEXT,
    -- The latest progress reported (docs/hooks.md): JSON [value, message], NULL without any.
    progress     TEXT
);
-- Claim of jobs without limits: one range scan per (queue, priority), FIFO by due time.
CREATE INDEX IF NOT EXISTS conveyor_jobs_pending ON conveyor_jobs (queue, priority, run_at)
    WHERE state = 'pending' AND grp IS NULL;
-- Claim of a group's jobs: the head of one group, FIFO by due time.
CREATE INDEX IF NOT EXISTS conveyor_jobs_grouped ON conveyor_jobs (queue, priority, grp, run_at)
    WHERE state = 'pending' AND grp IS NOT NULL;
-- Reclaim: expired leases only.
CREATE INDEX IF NOT EXISTS conveyor_jobs_running ON conveyor_jobs (lease_until)
    WHERE state = 'running';
-- Enqueue dedupe: a key belongs to one job of its queue until that job's retention ends.
CREATE UNIQUE INDEX IF NOT EXISTS conveyor_jobs_key ON conveyor_jobs (queue, key)
    WHERE key IS NOT NULL;
-- Retention purge of finished jobs.
CREATE INDEX IF NOT EXISTS conveyor_jobs_expires ON conveyor_jobs (expires_at)
    WHERE expires_at IS NOT NULL;
-- The dead letter queue, newest first.
CREATE INDEX IF NOT EXISTS conveyor_jobs_dead ON conveyor_jobs (finished_at)
    WHERE state = 'dead';
-- Worker processes waiting for work: producers send each a datagram after they commit.
CREATE TABLE IF NOT EXISTS conveyor_listeners (
    name   TEXT PRIMARY KEY,
    queues TEXT NOT NULL,
    pid    INTEGER NOT NULL,
    since  REAL NOT NULL
);
-- Live workers, as they report themselves with each heartbeat.
CREATE TABLE IF NOT EXISTS conveyor_workers (
    id        TEXT PRIMARY KEY,
    info      TEXT NOT NULL,
    expires   REAL NOT NULL
);
-- Groups of jobs with the same limit keys, per queue and level: their declared rules (JSON
-- [[key, rate, burst, concurrency], ...] of the latest enqueue), their turn in the round robin,
-- and when they may next be claimable (inf: idle or waiting for a concurrency slot). The jobs
-- without limits take turns as the group ''.
CREATE TABLE IF NOT EXISTS conveyor_groups (
    queue    TEXT    NOT NULL,
    priority INTEGER NOT NULL,
    grp      TEXT    NOT NULL,
    rules    TEXT    NOT NULL DEFAULT '[]',
    turn     INTEGER NOT NULL DEFAULT 0,
    ready_at REAL    NOT NULL,
    PRIMARY KEY (queue, priority, grp)
);
CREATE INDEX IF NOT EXISTS conveyor_groups_ready ON conveyor_groups (queue, priority, ready_at);
-- Limit keys per queue: the bucket (tat), the slots held, a RateLimited throttle, and a
-- run-time rule that overrides the declared one (rate NULL: none, key '' is the queue's own).
CREATE TABLE IF NOT EXISTS conveyor_limits (
    queue        TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    tat          REAL    NOT NULL DEFAULT 0,
    running      INTEGER NOT NULL DEFAULT 0,
    closed_until REAL,
    rate         REAL,
    burst        INTEGER,
    concurrency  INTEGER,
    PRIMARY KEY (queue, key)
);
-- Groups waiting for a slot of a key: made claimable again when one is freed.
CREATE TABLE IF NOT EXISTS conveyor_waiters (
    queue    TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    priority INTEGER NOT NULL,
    grp      TEXT    NOT NULL,
    PRIMARY KEY (queue, key, priority, grp)
);
-- Paused queues (task '') and paused tasks of a queue: reserve claims no job they cover.
CREATE TABLE IF NOT EXISTS conveyor_paused (
    queue TEXT NOT NULL,
    task  TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (queue, task)
);
-- Due jobs of paused tasks that a reservation set aside ("parked": out of the claim index, so
-- later claims do not walk past them again), and resume makes them pending again.
CREATE INDEX IF NOT EXISTS conveyor_jobs_parked ON conveyor_jobs (queue, task)
    WHERE state = 'parked';
