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
    errors       TEXT    NOT NULL DEFAULT '[]'
);
-- Claim: one range scan per (queue, priority), FIFO by due time.
CREATE INDEX IF NOT EXISTS conveyor_jobs_pending ON conveyor_jobs (queue, priority, run_at)
    WHERE state = 'pending';
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
