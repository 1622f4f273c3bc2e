"""The embedded backend: one SQLite file in WAL mode, shared by the processes of one host.

SQLite has no clock of its own: the host's clock, read by each process, is the store's.

``sqlite:///:memory:`` is the same store in memory, for tests: one process's, gone when its last
broker closes. Each connection to ``:memory:`` would be a database of its own, so every thread's
connection opens one *named* shared-cache memory database instead
(``file:conveyor-<name>?mode=memory&cache=shared``); brokers of one process opened with the same
``?name=`` share it. A shared cache locks tables, not the file, and a lock it refuses is not
retried by ``busy_timeout``: writers take turns on a lock of the process instead of the flock,
and connections read uncommitted (a read never waits for a table lock, nor blocks a writer).

Every operation is one ``BEGIN IMMEDIATE`` transaction. Idle workers wait on an abstract Unix
datagram socket registered in ``conveyor_listeners``; producers send each listener a byte after
they commit, so a new task starts within milliseconds without polling.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import select
import socket
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conveyor import headers as stored_headers
from conveyor import serializer
from conveyor.brokers import backpressure
from conveyor.brokers import sqlite_control as control
from conveyor.brokers import sqlite_limits as limiter
from conveyor.brokers import sqlite_lock as writer_lock
from conveyor.brokers.base import (
    PARK_BUDGET,
    WHOLE_QUEUE,
    Broker,
    Lease,
    as_float,
    as_int,
    as_text,
    claimed,
    duplicate_id,
    errors_of,
    job_row,
    pause_target,
    pauses,
    resends,
    worker_infos,
)
from conveyor.errors import ConfigurationError, KeyConflict, StoreUnavailable
from conveyor.limits import group_of
from conveyor.priority import Fairness
from conveyor.records import (
    AckStatus,
    CancelAnswer,
    Delivery,
    Enqueued,
    JobInfo,
    LimitInfo,
    Message,
    Outcome,
    Pause,
    QueueStats,
    Reclaimed,
    Rule,
    WorkerInfo,
)

_SCHEMA = resources.files("conveyor.brokers").joinpath("sqlite_schema.sql").read_text()
_JOB_COLUMNS = (
    "id, task, queue, priority, state, payload, attempt, max_attempts, run_at, enqueued_at, "
    "started_at, finished_at, key, result, errors, worker, lease_until,"
    " state = 'running' AND cancel_token = token"
)
_COUNT_READY = """
SELECT count(*) FROM (SELECT 1 FROM conveyor_jobs
                       WHERE state = 'pending' AND queue = ? AND priority = ? AND run_at <= ? AND grp IS NULL
                       LIMIT ?)
"""
_COUNT_BOTH = """
SELECT (SELECT count(*) FROM (SELECT 1 FROM conveyor_jobs
                               WHERE state = 'pending' AND queue = ? AND priority = ? AND run_at <= ?
                                 AND grp IS NULL LIMIT ?)),
       (SELECT count(*) FROM (SELECT 1 FROM conveyor_jobs
                               WHERE state = 'pending' AND queue = ? AND priority = ? AND run_at <= ?
                                 AND grp IS NOT NULL LIMIT ?))
"""
# A queue's pending (ready or scheduled) jobs, counted up to a bound: the max_queued check.
_COUNT_PENDING = """
SELECT count(*) FROM (SELECT 1 FROM conveyor_jobs WHERE state = 'pending' AND queue = ? LIMIT ?)
"""
# The next stored level above a given one, among a queue's pending jobs: one index probe.
_LEVEL_ABOVE = """
SELECT min(priority) FROM (
  SELECT min(priority) AS priority FROM conveyor_jobs
   WHERE state = 'pending' AND queue = :queue AND priority > :level AND grp IS NULL
  UNION ALL
  SELECT min(priority) FROM conveyor_jobs
   WHERE state = 'pending' AND queue = :queue AND priority > :level AND grp IS NOT NULL)
"""
#: Decodes TEXT values at C speed, a corrupt one with U+FFFD where it is not UTF-8.
_TEXT = functools.partial(str, encoding="utf-8", errors="replace")
#: A history that is not a JSON array (a corrupt row) is kept quoted as the first entry.
_APPEND_ERROR = (
    "errors = json_insert(CASE WHEN json_valid(errors) AND json_type(errors) = 'array' THEN errors"
    " ELSE json_array(json_object('type', 'CorruptRecord', 'message', quote(errors))) END,"
    " '$[#]', json(:error))"
)
#: Seconds past its expiry after which a worker's registry entry is deleted.
_FORGET_WORKERS = 3600.0
_LISTEN_FALLBACK = 1.0 if sys.platform.startswith("linux") else 0.05


MEMORY_IS_PRIVATE = (
    "an in-memory store (sqlite:///:memory:) belongs to the process that opened it: run its tasks"
    " in that process (conveyor.testing.drain), or use a file (sqlite:///path.db) to share a store"
    " between processes"
)


class _WritersLock:
    """The writers' lock of one memory store, shared by the brokers open on it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


#: The writers' locks of this process's memory stores, by name (see the module's docstring),
#: each kept while a broker holds it.
_MEMORY_LOCKS: weakref.WeakValueDictionary[str, _WritersLock] = weakref.WeakValueDictionary()
_MEMORY_LOCKS_LOCK = threading.Lock()
_MEMORY_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _path_from_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.netloc or not path:
        raise ConfigurationError(
            f"invalid SQLite URL {url!r}: use sqlite:///relative/path.db, sqlite:////absolute/path.db"
            " or sqlite:///:memory: (tests)"
        )
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    known = {"synchronous", "busy_timeout", "lock_timeout"} | ({"name"} if path == ":memory:" else set())
    unknown = set(options) - known
    if unknown:
        raise ConfigurationError(f"unknown SQLite URL options: {', '.join(sorted(unknown))}")
    if "name" in options and not _MEMORY_NAME.match(options["name"]):
        raise ConfigurationError(f"invalid memory store name {options['name']!r}: letters, digits, _ . -")
    return path, options


class SQLiteBroker(Broker):
    """Conveyor's embedded default; safe for several worker processes on one host."""

    parallel_writes = False  # one writer at a time (see _write)

    def __init__(self, url: str, retention: float = 86400.0) -> None:
        self.path, options = _path_from_url(url)
        self.display_url = url
        self.retention = retention
        self._synchronous = options.get("synchronous", "normal").upper()
        if self._synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigurationError(f"invalid synchronous={self._synchronous!r}")
        self._busy_ms = int(options.get("busy_timeout", "30000"))
        try:
            #: Seconds a writer waits for the writers' lock (see sqlite_lock).
            self.lock_timeout = float(options.get("lock_timeout", "30"))
        except ValueError:
            self.lock_timeout = -1.0
        if not 0 < self.lock_timeout < float("inf"):
            raise ConfigurationError(
                f"invalid lock_timeout={options['lock_timeout']!r}: seconds, more than 0"
            )
        self._local = threading.local()
        #: Closers of the threads' connections and lock descriptors, each called when its
        #: thread ends (its thread-local slot is dropped) or when the broker closes.
        #: Each thread's connection closer, with the thread: see close().
        self._closers: list[tuple[weakref.finalize[Any, Any], threading.Thread]] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._listener_name = ""
        #: wait_cancel's sockets by worker id, and their registered names (see close()).
        self._cancel_listener: dict[str, socket.socket] = {}
        self._cancel_names: list[str] = []
        self._listening = ""
        self._pid = os.getpid()
        #: The store is a memory database of this process (``sqlite:///:memory:``).
        self.memory = self.path == ":memory:"
        self._keeper: sqlite3.Connection | None = None
        if self.memory:
            name = options.get("name") or os.urandom(8).hex()
            self.path = f"file:conveyor-{name}?mode=memory&cache=shared"
            with _MEMORY_LOCKS_LOCK:
                self._writers = _MEMORY_LOCKS.setdefault(name, _WritersLock())
            # The database lives while one connection to it is open: this one, until close().
            self._keeper = self.connect()
        with self._write() as db:
            _migrate(db)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    # -- connections -------------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """A new connection to the store, in autocommit mode (``isolation_level=None``): for
        ``enqueue(..., connection=)`` in the caller's own transaction (``BEGIN`` ... ``COMMIT``)."""
        if self.memory and self._pid != os.getpid():
            raise ConfigurationError(MEMORY_IS_PRIVATE)
        db = sqlite3.connect(
            self.path,
            isolation_level=None,
            timeout=self._busy_ms / 1000,
            check_same_thread=False,
            uri=self.memory,
        )
        if self.memory:
            db.execute("PRAGMA read_uncommitted = 1")
        return db

    def _db(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # forked: the parent's connections and socket are not ours
            if self.memory:
                raise ConfigurationError(MEMORY_IS_PRIVATE)
            self._pid, self._local, self._closers = os.getpid(), threading.local(), []
            self._listener, self._listening = None, ""
            self._cancel_listener, self._cancel_names = {}, []
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # Closed by the broker's close() on another thread: allowed, nothing else crosses.
            db = self.connect()
            # A corrupt TEXT value (not UTF-8) reads as text with U+FFFD in it: it costs its own
            # job (an unknown task is buried), not the reservation or listing it appears in.
            db.text_factory = _TEXT
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            # Writers queue on this file (see _write); flock locks belong to an open file, so
            # each thread opens its own.
            writer = (
                -1
                if self.memory
                else os.open(f"{self.path}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            )
            self._local.db, self._local.writer = db, writer
            owner = _Owner()  # only this thread's slot holds it: it dies with the thread
            self._local.owner = owner
            closer = weakref.finalize(owner, _close_connection, db, writer)
            closer.atexit = False
            with self._lock:
                self._closers = [(c, t) for c, t in self._closers if c.alive]
                self._closers.append((closer, threading.current_thread()))
        return db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. Writers queue on a flock before ``BEGIN IMMEDIATE``: SQLite's
        own busy handler retries with sleeps of up to 100 ms, and under contention from busy
        workers a producer could wait seconds; a blocked flock wakes at the release. The wait
        is bounded by ``lock_timeout`` (StoreUnavailable naming the holder)."""
        db = self._db()
        if self.memory:
            if not self._writers.lock.acquire(timeout=self.lock_timeout):
                raise StoreUnavailable(
                    f"store {self.display_url} unavailable: its writers' lock was not free within"
                    f" lock_timeout={self.lock_timeout:g} s"
                )
            try:
                yield from _transaction(db)
            finally:
                self._writers.lock.release()
            return
        own: int = self._local.writer
        fd = writer_lock.acquire(own, f"{self.path}-writer.lock", self.lock_timeout, self.display_url)
        try:
            yield from _transaction(db)
        finally:
            writer_lock.release(fd, own)

    # -- enqueue -----------------------------------------------------------------------------

    def enqueue(
        self,
        messages: Sequence[Message],
        now: float | None = None,
        connection: Any = None,
        max_queued: Mapping[str, int] | None = None,
    ) -> list[Enqueued]:
        caps = backpressure.capped(messages, max_queued)
        if connection is not None:
            if not isinstance(connection, sqlite3.Connection):
                raise ConfigurationError("connection must be a sqlite3.Connection to the store's file")
            # The caller's transaction: the rows exist iff it commits. Workers are woken now and
            # fall back to their periodic check if the commit comes later.
            connection.execute("SAVEPOINT conveyor_enqueue")
            try:
                out = self._insert(connection, messages, time.time() if now is None else now)
                _check_caps(connection, messages, out, caps)
            except BaseException:
                connection.execute("ROLLBACK TO conveyor_enqueue")
                connection.execute("RELEASE conveyor_enqueue")
                raise
            connection.execute("RELEASE conveyor_enqueue")
        else:
            with self._write() as db:  # the clock read once the write lock is held
                out = self._insert(db, messages, time.time() if now is None else now)
                _check_caps(db, messages, out, caps)
        if any(e.created for e in out):
            self._notify({m.queue for m in messages})
        return out

    def _insert(self, db: sqlite3.Connection, messages: Sequence[Message], now: float) -> list[Enqueued]:
        out: list[Enqueued] = []
        groups: dict[tuple[str, int, str], tuple[tuple[Rule, ...], float]] = {}
        for m in messages:
            if m.key is not None:
                row = db.execute(
                    "SELECT id, task, payload FROM conveyor_jobs WHERE queue = ? AND key = ?",
                    (m.queue, m.key),
                ).fetchone()
                if row is not None:
                    if row[1] != m.task or bytes(row[2]) != m.payload:
                        raise KeyConflict(
                            f"key {m.key!r} belongs to job {row[0]} with a different task or payload"
                        )
                    out.append(Enqueued(row[0], False))
                    continue
            due = m.run_at if m.run_at is not None else now + m.delay
            grp = group_of(m.limits) if m.limits else None
            headers = None if m.headers is None else stored_headers.encode(m.headers)
            inserted = db.execute(
                "INSERT INTO conveyor_jobs (id, task, queue, priority, state, payload, run_at, enqueued_at,"
                " max_attempts, key, grp, headers) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (m.id, m.task, m.queue, m.priority, m.payload, due, now, m.max_attempts, m.key, grp, headers),
            ).rowcount
            if not inserted:  # the id is taken: by this very message (sent again), or refused
                held = db.execute(
                    "SELECT queue, task, payload, priority, max_attempts, key FROM conveyor_jobs WHERE id = ?",
                    (m.id,),
                ).fetchone()
                if held is None or not resends(m, held):
                    raise duplicate_id(m.id)
            elif grp is not None:
                at = (m.queue, m.priority, grp)
                groups[at] = (m.limits, min(due, groups[at][1]) if at in groups else due)
            out.append(Enqueued(m.id, True))
        for (queue, priority, _), (rules, due) in groups.items():
            limiter.grouped(db, queue, priority, rules, due)
        return out

    # -- reserve -----------------------------------------------------------------------------

    def reserve(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
        fairness: Fairness,
        now: float | None = None,
    ) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        now = time.time() if now is None else now
        queues = list(dict.fromkeys(queues))
        levels = len(fairness.weights)
        with self._write() as db:
            queues, paused = _unpaused(db, queues, limit, now)
            # The stored levels each of the worker's levels takes, per queue (see _served).
            served = [_served(db, q, levels) for q in queues]
            # Queues with limits claim through them (sqlite_limits); the rest as they always did.
            claims = {
                q: claim for q in queues if (claim := limiter.Claim.open(db, q, now, paused.get(q, set())))
            }
            ready = [
                [
                    sum(self._ready(db, q, p, now, limit, claims.get(q)) for p in served[i][level])
                    for i, q in enumerate(queues)
                ]
                for level in range(levels)
            ]
            take = fairness.split([sum(per_queue) for per_queue in ready], limit)
            rows: list[Any] = []
            for level, wanted in enumerate(take):
                if not wanted:
                    continue
                dealt = fairness.deal(level, wanted, queues, ready[level])
                for i, (q, n) in enumerate(zip(queues, dealt, strict=True)):
                    before = len(rows)
                    params = {"now": now, "lease": lease, "worker": worker, "queue": q, "held": None}
                    claim = claims.get(q)
                    for p in served[i][level]:
                        if len(rows) - before >= n:
                            break
                        left = n - (len(rows) - before)
                        if claim is None:
                            rows += db.execute(
                                limiter.CLAIM_PLAIN, params | {"priority": p, "limit": left}
                            ).fetchall()
                        else:
                            rows += claim.turns(p, left, lease, worker)
            for claim in claims.values():
                claim.save()
        return claimed(rows)

    @staticmethod
    def _ready(db: sqlite3.Connection, queue: str, priority: int, now: float, limit: int, claim: Any) -> int:
        """Due jobs of a level, counted up to ``limit`` (without limits, and with them when the
        queue has limits: then the claim learns whether any without limits are due)."""
        if claim is None:
            return int(db.execute(_COUNT_READY, (queue, priority, now, limit)).fetchone()[0])
        # One more grouped job than the reservation may take: then the claim knows a group alone
        # in its level keeps due jobs after it.
        plain, grouped = db.execute(
            _COUNT_BOTH, (queue, priority, now, limit, queue, priority, now, limit + 1)
        ).fetchone()
        claim.plain_due[priority] = plain > 0
        claim.grouped_due[priority] = grouped
        return int(plain + min(grouped, limit))

    # -- wait --------------------------------------------------------------------------------

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        listener = self._listen(queues)
        due = self._earliest_due(queues)
        if due is not None:
            timeout = min(timeout, max(0.0, due - time.time()))
        timeout = min(timeout, _LISTEN_FALLBACK)
        if timeout > 0 and select.select([listener], [], [], timeout)[0]:
            with contextlib.suppress(BlockingIOError):
                while listener.recv(64):
                    pass

    def _earliest_due(self, queues: Sequence[str]) -> float | None:
        """Smallest due time of pending jobs without limits (one index probe per (queue,
        priority) present) and of groups that wait for a token; a queue whose own limit is
        spent counts from when it allows a start again."""
        db = self._db()
        now = time.time()
        best: float | None = None
        stopped = {q for (q,) in db.execute("SELECT queue FROM conveyor_paused WHERE task = ''")}
        for q in queues:
            if q in stopped:  # its due jobs wait for resume, which wakes the workers
                continue
            blocked, group_due = limiter.earliest(db, q, now)
            if blocked:
                dues = [group_due]
            else:
                dues = [group_due]
                level = -1
                while True:
                    row = db.execute(
                        "SELECT priority, run_at FROM conveyor_jobs WHERE state = 'pending' AND queue = ?"
                        " AND priority > ? AND grp IS NULL ORDER BY priority, run_at LIMIT 1",
                        (q, level),
                    ).fetchone()
                    if row is None or not _next_level(row[0], level):
                        break
                    level = row[0]
                    if type(row[1]) is float or type(row[1]) is int:
                        dues.append(row[1])
            for due in dues:
                if due is not None:
                    best = due if best is None else min(best, due)
        return best

    def _listen(self, queues: Sequence[str]) -> socket.socket:
        """This process's wake-up socket, registered for ``queues`` (re-registered if they change)."""
        self._db()
        listening = ",".join(sorted(set(queues)))
        if self._listener is not None and self._listening == listening:
            return self._listener
        if self._listener is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            name = f"conveyor-{os.getpid()}-{os.urandom(6).hex()}"
            sock.bind("\0" + name)
            sock.setblocking(False)
            self._listener, self._listener_name = sock, name
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO conveyor_listeners (name, queues, pid, since) VALUES (?, ?, ?, ?)",
                (self._listener_name, listening, os.getpid(), time.time()),
            )
        self._listening = listening
        return self._listener

    def _notify(self, queues: set[str]) -> None:
        """Wake every worker listening on one of ``queues``; forget listeners that are gone."""
        db = self._db()
        gone = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            for name, listening in db.execute("SELECT name, queues FROM conveyor_listeners").fetchall():
                if queues.isdisjoint(listening.split(",")):
                    continue
                try:
                    sock.sendto(b"!", "\0" + name)
                except (ConnectionRefusedError, FileNotFoundError):
                    gone.append((name,))
                except BlockingIOError:
                    pass  # its buffer is full of wake-ups already
        if gone:
            with self._write() as w:
                w.executemany("DELETE FROM conveyor_listeners WHERE name = ?", gone)

    # -- outcomes ----------------------------------------------------------------------------

    def ack(self, outcomes: Sequence[Outcome], now: float | None = None) -> list[AckStatus]:
        now = time.time() if now is None else now
        statuses: list[AckStatus] = []
        woken: set[str] = set()
        freed = limiter.Freed()
        with self._write() as db:
            for o in outcomes:
                status = self._settle(db, o, now, freed)
                statuses.append(status)
                if status.status == "ok":
                    woken.update(m.queue for m in o.enqueues)
                    if o.kind in control.RETURNING_KINDS:
                        woken.add("*")
            woken |= freed.apply(db, now)
        if woken:
            self._notify_all() if "*" in woken else self._notify(woken)
        return statuses

    def _settle(self, db: sqlite3.Connection, o: Outcome, now: float, freed: limiter.Freed) -> AckStatus:
        owned = "WHERE id = :id AND token = :token AND state = 'running'"
        left = "RETURNING queue, priority, grp, held"
        finished = "RETURNING queue, NULL, NULL, held"  # a finished job returns to no group
        params: dict[str, Any] = {"id": o.id, "token": o.token, "now": now}
        if o.kind in control.RETURNING_KINDS or o.kind == "cancelled":
            settled = control.settle(db, o, now, self.retention)
            if settled is not None:
                if settled.row is not None:
                    row, requeued = settled.row, settled.requeued
                    self._left_running(row, freed)
                    if requeued:  # woken by ack, as a retry is
                        limiter.requeued(db, row[0], row[1], row[2], now + o.delay)
                return settled.status
        if o.kind in ("retry", "throttled"):
            params |= {"due": now + o.delay, "error": serializer.dumps(o.error).decode()}
            refund = ", attempt = attempt - 1, throttled = throttled + 1" if o.kind == "throttled" else ""
            sql = (
                "UPDATE conveyor_jobs SET state = 'pending', run_at = :due, lease_until = NULL,"
                f" worker = NULL{refund}, {_APPEND_ERROR} {owned} {left}"
            )
            row = db.execute(sql, params).fetchone()
            if row is None:
                return AckStatus("lost")
            self._left_running(row, freed)
            if o.kind == "throttled":
                limiter.close_keys(db, row[0], row[2], now + o.delay)
            limiter.requeued(db, row[0], row[1], row[2], now + o.delay)
            return AckStatus("ok")
        if o.kind == "dead":
            params["error"] = serializer.dumps(o.error).decode()
            sql = (
                "UPDATE conveyor_jobs SET state = 'dead', finished_at = :now, lease_until = NULL,"
                f" {_APPEND_ERROR} {owned} {finished}"
            )
            row = db.execute(sql, params).fetchone()
            if row is None:
                return AckStatus("lost")
            self._left_running(row, freed)
            return AckStatus("ok")
        transactional = bool(o.effects or o.enqueues)
        if transactional:
            db.execute("SAVEPOINT outcome")
        params |= {"result": o.result, "expires": now + self.retention}
        sql = (
            "UPDATE conveyor_jobs SET state = 'succeeded', result = :result, finished_at = :now,"
            f" expires_at = :expires, lease_until = NULL {owned} {finished}"
        )
        row = db.execute(sql, params).fetchone()
        if row is None:
            if transactional:
                db.execute("ROLLBACK TO outcome")
                db.execute("RELEASE outcome")
            return AckStatus("lost")
        if not transactional:
            self._left_running(row, freed)
            return AckStatus("ok")
        try:
            for statement, *args in o.effects:
                db.execute(statement, *args)
            self._insert(db, o.enqueues, now)
        except Exception as exc:  # noqa: BLE001 - whatever the effect raised, only its outcome fails
            db.execute("ROLLBACK TO outcome")
            db.execute("RELEASE outcome")
            return AckStatus("effects_failed", f"{type(exc).__name__}: {exc}")
        db.execute("RELEASE outcome")
        self._left_running(row, freed)
        return AckStatus("ok")

    @staticmethod
    def _left_running(row: Sequence[Any], freed: limiter.Freed) -> None:
        """A job (``queue, priority, grp, held``) left running: its slots are given back with the
        transaction's others (``freed.apply``). (``held`` is left on the row once the job has
        left running: only this transition reads it, and the next claim overwrites it;
        RETURNING shows the row as updated, so it is not cleared.)"""
        freed.add(row[0], row[3])

    def extend(self, leases: Sequence[Lease], lease: float, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        lost = []
        with self._write() as db:
            for job_id, token in leases:
                cur = db.execute(
                    "UPDATE conveyor_jobs SET lease_until = ? WHERE id = ? AND token = ? AND state = 'running'",
                    (now + lease, job_id, token),
                )
                if not cur.rowcount:
                    lost.append(job_id)
        return lost

    def release(self, leases: Sequence[Lease]) -> int:
        count = 0
        freed = limiter.Freed()
        with self._write() as db:
            now = time.time()
            for lease in leases:
                row = db.execute(
                    "UPDATE conveyor_jobs SET state = 'pending', attempt = attempt - 1, lease_until = NULL,"
                    " worker = NULL, started_at = NULL WHERE id = ? AND token = ? AND state = 'running'"
                    " RETURNING queue, priority, grp, held, run_at",
                    lease,
                ).fetchone()
                if row is not None:
                    count += 1
                    self._left_running(row, freed)
                    limiter.requeued(db, row[0], row[1], row[2], row[4])
            freed.apply(db, now)
        if count:
            self._notify_all()
        return count

    def reclaim(self, now: float | None = None) -> Reclaimed:
        now = time.time() if now is None else now
        db = self._db()
        probe = "SELECT 1 FROM conveyor_jobs WHERE state = 'running' AND lease_until < ? LIMIT 1"
        if db.execute(probe, (now,)).fetchone() is None:
            return Reclaimed([], [])
        requeued: list[str] = []
        dead: list[str] = []
        freed = limiter.Freed()
        with self._write() as db:
            expired = db.execute(
                "SELECT id, token, attempt, max_attempts, worker FROM conveyor_jobs"
                " WHERE state = 'running' AND lease_until < ?",
                (now,),
            ).fetchall()
            for job_id, token, stored_attempt, stored_max, stored_worker in expired:
                # Read as their types: a corrupt row is reclaimed like the rest, never stops the
                # sweep (its token is matched as stored).
                attempt, max_attempts = as_int(stored_attempt), as_int(stored_max)
                worker = None if stored_worker is None else as_text(stored_worker)
                error = serializer.dumps(
                    {
                        "attempt": attempt,
                        "type": "WorkerLost",
                        "message": f"worker lost: lease expired while running on {worker}",
                        "traceback": None,
                        "worker": worker,
                        "at": now,
                    }
                ).decode()
                final = attempt >= max_attempts
                row = db.execute(
                    f"UPDATE conveyor_jobs SET state = :state, lease_until = NULL, {_APPEND_ERROR},"
                    " finished_at = CASE WHEN :state = 'dead' THEN :now END"
                    " WHERE id = :id AND token = :token AND state = 'running'"
                    " RETURNING queue, priority, grp, held, run_at",
                    {
                        "state": "dead" if final else "pending",
                        "error": error,
                        "now": now,
                        "id": job_id,
                        "token": token,
                    },
                ).fetchone()
                if row is not None:
                    self._left_running(row, freed)
                    if not final:
                        limiter.requeued(db, row[0], row[1], row[2], row[4])
                (dead if final else requeued).append(job_id)
            freed.apply(db, now)
        if requeued or dead:
            self._notify_all()
        return Reclaimed(requeued, dead)

    def _notify_all(self) -> None:
        db = self._db()
        queues = {
            q
            for (qs,) in db.execute("SELECT queues FROM conveyor_listeners")
            if not qs.startswith("!")  # a worker's cancel channel (wait_cancel), not its queues
            for q in qs.split(",")
        }
        if queues:
            self._notify(queues)

    # -- reads and the dead letter queue -----------------------------------------------------

    def cancel(self, job_id: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._write() as db:
            return bool(
                db.execute(
                    "UPDATE conveyor_jobs SET state = 'cancelled', finished_at = ?, expires_at = ?"
                    " WHERE id = ? AND state IN ('pending', 'parked')",
                    (now, now + self.retention, job_id),
                ).rowcount
            )

    def request_cancel(self, job_id: str, grace: float, now: float | None = None) -> CancelAnswer:
        now = time.time() if now is None else now
        with self._write() as db:
            answer, worker = control.request_cancel(db, job_id, grace, now, self.retention)
        if worker is not None:
            self._notify_cancel(worker)
        return answer

    def cancelling(self, leases: Sequence[Lease]) -> dict[str, float]:
        return control.cancelling(self._db(), leases)

    def wait_cancel(self, worker: str, timeout: float) -> bool:
        self._db()
        sock = self._cancel_listener.get(worker)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            name = f"conveyor-{os.getpid()}-{os.urandom(6).hex()}"
            sock.bind("\0" + name)
            sock.setblocking(False)
            with self._write() as db:
                db.execute(
                    "INSERT OR REPLACE INTO conveyor_listeners (name, queues, pid, since) VALUES (?, ?, ?, ?)",
                    (name, control.channel(worker), os.getpid(), time.time()),
                )
            self._cancel_listener[worker] = sock
            self._cancel_names.append(name)
            return True
        timeout = min(timeout, _LISTEN_FALLBACK)  # a stopping worker's thread is not held long
        woken = bool(timeout > 0 and select.select([sock], [], [], timeout)[0])
        with contextlib.suppress(BlockingIOError):
            while sock.recv(64):
                woken = True
        return woken

    def _notify_cancel(self, worker: str) -> None:
        """Wake the threads waiting in ``wait_cancel`` for ``worker``."""
        db = self._db()
        channel = control.channel(worker)
        gone = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            for (name,) in db.execute("SELECT name FROM conveyor_listeners WHERE queues = ?", (channel,)):
                try:
                    sock.sendto(b"!", "\0" + name)
                except (ConnectionRefusedError, FileNotFoundError):
                    gone.append((name,))  # its process is gone
                except BlockingIOError:
                    pass  # its buffer is full of wake-ups already
        if gone:
            with self._write() as w:
                w.executemany("DELETE FROM conveyor_listeners WHERE name = ?", gone)

    def get(self, job_id: str, now: float | None = None) -> JobInfo | None:
        now = time.time() if now is None else now
        row = (
            self._db()
            .execute(f"SELECT {_JOB_COLUMNS}, headers, progress FROM conveyor_jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        return None if row is None else job_row(row, now, errors_of(row[14]), row[18], row[19])

    def set_progress(self, updates: Sequence[tuple[str, int, str]], now: float | None = None) -> int:
        if not updates:
            return 0
        with self._write() as db:
            return sum(
                db.execute(
                    "UPDATE conveyor_jobs SET progress = ? WHERE id = ? AND token = ? AND state = 'running'",
                    (stored, job_id, token),
                ).rowcount
                for job_id, token, stored in updates
            )

    def stats(self, queues: Sequence[str] | None = None, now: float | None = None) -> list[QueueStats]:
        now = time.time() if now is None else now
        where = ""
        params: list[Any] = [now, now]
        if queues is not None:
            where = f"WHERE queue IN ({','.join('?' * len(queues))})"
            params += list(queues)
        rows = (
            self._db()
            .execute(
                "SELECT queue, priority,"
                " CASE WHEN state NOT IN ('pending', 'parked') THEN state WHEN run_at <= ? THEN 'ready'"
                " ELSE 'scheduled' END AS st,"
                " count(*), min(CASE WHEN state IN ('pending', 'parked') AND run_at <= ? THEN run_at END)"
                f" FROM conveyor_jobs {where} GROUP BY queue, priority, st ORDER BY queue",
                params,
            )
            .fetchall()
        )
        by_queue: dict[str, tuple[dict[str, dict[int, int]], list[float]]] = {}
        for q in queues or ():
            by_queue[q] = ({}, [])
        for queue, priority, state, count, oldest in rows:
            # A corrupt row's fields read as their types (see base.job_row), counted with the rest.
            counts, ages = by_queue.setdefault(as_text(queue), ({}, []))
            per_level = counts.setdefault(as_text(state), {})
            level = as_int(priority)
            per_level[level] = per_level.get(level, 0) + count
            if oldest is not None:
                ages.append(now - as_float(oldest))
        held = limiter.held_back(self._db(), list(by_queue), now)
        return [
            QueueStats(
                queue=q,
                counts=c,
                oldest_ready_age=max(a) if a else None,
                throttled=sum(c.get("ready", {}).values()) if held.get(q) == -1 else held.get(q, 0),
            )
            for q, (c, a) in sorted(by_queue.items())
        ]

    def jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        task: str | None = None,
        limit: int = 100,
        offset: int = 0,
        now: float | None = None,
    ) -> list[JobInfo]:
        now = time.time() if now is None else now
        # A parked job (see _unpaused) is pending, set aside while its task is paused.
        stored, due, order = {
            "scheduled": (None, "AND state IN ('pending', 'parked') AND run_at > :now", "run_at, rowid"),
            "ready": (None, "AND state IN ('pending', 'parked') AND run_at <= :now", "run_at, rowid"),
            "running": ("running", "", "started_at"),
            None: (None, "", "rowid DESC"),
        }.get(state, (state, "", "finished_at DESC"))
        rows = (
            self._db()
            .execute(
                f"SELECT {_JOB_COLUMNS} FROM conveyor_jobs"
                " WHERE (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)"
                f" AND (:task IS NULL OR task = :task) {due} ORDER BY {order} LIMIT :limit OFFSET :offset",
                {"state": stored, "queue": queue, "task": task, "limit": limit, "offset": offset, "now": now},
            )
            .fetchall()
        )
        return [_job(r, now) for r in rows]

    def set_limit(self, queue: str, rule: Rule) -> None:
        with self._write() as db:
            limiter.set_limit(db, queue, rule, time.time())
        self._notify({queue})

    def clear_limit(self, queue: str, key: str) -> bool:
        with self._write() as db:
            cleared = limiter.clear_limit(db, queue, key, time.time())
        self._notify({queue})
        return cleared

    def limits(self, queue: str | None = None, now: float | None = None) -> list[LimitInfo]:
        return limiter.listing(self._db(), queue, time.time() if now is None else now)

    def time(self) -> float:
        return time.time()

    def beat(self, worker: WorkerInfo, ttl: float, now: float | None = None) -> None:
        info = serializer.dumps(worker).decode()
        with self._write() as db:  # the clock read once the write lock is held
            now = time.time() if now is None else now
            db.execute(
                "INSERT OR REPLACE INTO conveyor_workers (id, info, expires) VALUES (?, ?, ?)",
                (worker.id, info, now + ttl),
            )
            db.execute("DELETE FROM conveyor_workers WHERE expires < ?", (now - _FORGET_WORKERS,))

    def workers(self, now: float | None = None) -> list[WorkerInfo]:
        now = time.time() if now is None else now
        rows = (
            self._db()
            .execute("SELECT id, info FROM conveyor_workers WHERE expires >= ? ORDER BY id", (now,))
            .fetchall()
        )
        return worker_infos(rows)

    def replay(
        self, ids: Sequence[str] | None = None, queue: str | None = None, now: float | None = None
    ) -> int:
        now = time.time() if now is None else now
        sql = (
            "UPDATE conveyor_jobs SET state = 'pending', attempt = 0, run_at = :now, finished_at = NULL,"
            " started_at = NULL, worker = NULL, snoozes = 0, queue = coalesce(:queue, queue) WHERE state = 'dead'"
        )
        back = " RETURNING queue, priority, grp"
        with self._write() as db:
            if queue is not None:
                self._check_replay_keys(db, ids, queue)
            if ids is None:
                rows = db.execute(sql + back, {"now": now, "queue": queue}).fetchall()
            else:
                rows = [
                    row
                    for i in ids
                    for row in db.execute(sql + " AND id = :id" + back, {"now": now, "queue": queue, "id": i})
                ]
            for q, priority, grp in {(r[0], r[1], r[2]) for r in rows if r[2]}:
                limiter.requeued(db, q, priority, grp, now)
            count = len(rows)
        if count:
            self._notify_all()
        return count

    @staticmethod
    def _check_replay_keys(db: sqlite3.Connection, ids: Sequence[str] | None, queue: str) -> None:
        """Refuse a replay into ``queue`` that would give a key to two of its jobs."""
        clash = db.execute(
            "SELECT d.id, d.key, o.id FROM conveyor_jobs d JOIN conveyor_jobs o"
            " ON o.queue = :queue AND o.key = d.key AND o.id != d.id"
            " WHERE d.state = 'dead' AND d.key IS NOT NULL AND d.queue != :queue"
            f" {'' if ids is None else 'AND d.id IN (SELECT value FROM json_each(:ids))'} LIMIT 1",
            {"queue": queue, "ids": serializer.dumps(list(ids or [])).decode()},
        ).fetchone()
        if clash is not None:
            raise KeyConflict(
                f"cannot replay job {clash[0]} into {queue!r}: job {clash[2]} holds key {clash[1]!r}"
            )

    def purge(self, ids: Sequence[str] | None = None) -> int:
        with self._write() as db:
            if ids is None:
                return db.execute("DELETE FROM conveyor_jobs WHERE state = 'dead'").rowcount
            return sum(
                db.execute("DELETE FROM conveyor_jobs WHERE state = 'dead' AND id = ?", (i,)).rowcount
                for i in ids
            )

    def expire(self, now: float | None = None, limit: int = 1000) -> int:
        now = time.time() if now is None else now
        with self._write() as db:
            limiter.forget_idle(db, now, limit)
            return db.execute(
                "DELETE FROM conveyor_jobs WHERE rowid IN"
                " (SELECT rowid FROM conveyor_jobs WHERE expires_at <= ? LIMIT ?)",
                (now, limit),
            ).rowcount

    # -- pause and resume --------------------------------------------------------------------

    def pause(self, queue: str, task: str | None = None, now: float | None = None) -> None:
        queue, stored = pause_target(queue, task)
        # Reservations take the same writers' lock: one that has not committed yet holds it, and
        # every later one reads the pause.
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO conveyor_paused (queue, task, since) VALUES (?, ?, ?)",
                (queue, stored, time.time() if now is None else now),
            )

    def resume(self, queue: str, task: str | None = None) -> None:
        queue, stored = pause_target(queue, task)
        with self._write() as db:
            db.execute("DELETE FROM conveyor_paused WHERE queue = ? AND task = ?", (queue, stored))
            limiter.reopen_groups(db, queue, time.time())
        # The task's parked jobs back, PARK_BUDGET per write, so that other writers wait for no
        # more than one batch; a reservation between two batches takes what is back already.
        while stored != WHOLE_QUEUE:
            self._notify({queue})
            with self._write() as db:
                back = db.execute(
                    "UPDATE conveyor_jobs SET state = 'pending' WHERE rowid IN (SELECT rowid FROM conveyor_jobs"
                    " WHERE state = 'parked' AND queue = ? AND task = ? LIMIT ?)",
                    (queue, stored, PARK_BUDGET),
                ).rowcount
            if back < PARK_BUDGET:
                break
        self._notify({queue})

    def paused(self, queues: Sequence[str] | None = None) -> list[Pause]:
        rows = self._db().execute("SELECT queue, task, since FROM conveyor_paused").fetchall()
        return pauses([r for r in rows if queues is None or r[0] in queues])

    def close(self) -> None:
        if self._listener is not None and self._pid == os.getpid():
            with contextlib.suppress(sqlite3.Error), self._write() as db:
                db.execute("DELETE FROM conveyor_listeners WHERE name = ?", (self._listener_name,))
            self._listener.close()
        self._listener = None
        if self._cancel_names and self._pid == os.getpid():
            with contextlib.suppress(sqlite3.Error), self._write() as db:
                db.executemany(
                    "DELETE FROM conveyor_listeners WHERE name = ?", [(n,) for n in self._cancel_names]
                )
            for sock in self._cancel_listener.values():
                sock.close()
        self._cancel_listener, self._cancel_names = {}, []
        # A connection is closed here only if no thread can be inside it: this thread's own, or
        # one whose thread has ended. Closing one that a live thread is using (a worker's wait
        # still running past the worker's stop) crashes the process in SQLite's C code; such a
        # connection is closed by its finalizer when its thread ends and its slot goes.
        with self._lock:
            closers, self._closers = self._closers, []
        me = threading.current_thread()
        for closer, thread in closers:
            if thread is me or not thread.is_alive():
                closer()
            else:
                with self._lock:
                    self._closers.append((closer, thread))
        self._local.__dict__.clear()  # this thread connects anew if it uses the broker again
        if self._keeper is not None and self._pid == os.getpid():
            # The last connection to close takes the memory database with it.
            with contextlib.suppress(sqlite3.Error):
                self._keeper.close()
            self._keeper = None


def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class _Owner:
    """Stands for a thread in its thread-local slot; its end closes that thread's connection."""


def _close_connection(db: sqlite3.Connection, writer: int) -> None:
    with contextlib.suppress(sqlite3.Error):
        db.close()
    with contextlib.suppress(OSError):
        os.close(writer)


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store made by an earlier version up to the schema (limits', job control's and
    headers' columns); a no-op on
    a new or current one."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(conveyor_jobs)")}
    if columns and "grp" not in columns:
        db.execute("ALTER TABLE conveyor_jobs ADD COLUMN grp TEXT")
        db.execute("ALTER TABLE conveyor_jobs ADD COLUMN throttled INTEGER NOT NULL DEFAULT 0")
        db.execute("ALTER TABLE conveyor_jobs ADD COLUMN held TEXT")
        # The claim index now holds only jobs without limits (the schema creates it anew).
        db.execute("DROP INDEX IF EXISTS conveyor_jobs_pending")
    if columns and "snoozes" not in columns:  # job control (docs/job-control.md)
        db.execute("ALTER TABLE conveyor_jobs ADD COLUMN cancel_token INTEGER")
        db.execute("ALTER TABLE conveyor_jobs ADD COLUMN cancel_grace REAL")
        db.execute("ALTER TABLE conveyor_jobs ADD COLUMN snoozes INTEGER NOT NULL DEFAULT 0")
    if columns and "headers" not in columns:
        db.execute("ALTER TABLE conveyor_jobs ADD COLUMN headers TEXT")
    if columns and "progress" not in columns:
        db.execute("ALTER TABLE conveyor_jobs ADD COLUMN progress TEXT")


def _served(db: sqlite3.Connection, queue: str, levels: int) -> list[list[int]]:
    """The stored priorities each of a worker's ``levels`` takes from ``queue``: its own, and for
    the last level also any stored above it, which a producer configured with more levels wrote.
    Those come after the last level's own due jobs (rather than never)."""
    served = [[level] for level in range(levels)]
    level = levels - 1
    while (row := db.execute(_LEVEL_ABOVE, {"queue": queue, "level": level}).fetchone())[0] is not None:
        if not _next_level(row[0], level):
            break
        level = row[0]
        served[-1].append(level)
    return served


def _unpaused(
    db: sqlite3.Connection, queues: list[str], limit: int, now: float
) -> tuple[list[str], dict[str, set[str]]]:
    """The queues a reservation may claim from now, and the paused tasks of each: those not
    paused as a whole, whose first ``limit`` due jobs of every level belong to no paused task. Due jobs of paused tasks met at
    the head of a level are parked (out of the claim index, so no later claim walks past them
    again), up to PARK_BUDGET per call; a queue whose head is not clear within it sits this call
    out, and the next call parks on."""
    marks = ",".join("?" * len(queues))
    rows = db.execute(f"SELECT queue, task FROM conveyor_paused WHERE queue IN ({marks})", queues).fetchall()
    held: dict[str, set[str]] = {}
    if not rows:
        return queues, held
    for queue, task in rows:
        held.setdefault(queue, set()).add(task)
    budget = PARK_BUDGET
    open_: list[str] = []
    for q in queues:
        tasks = held.get(q)
        if tasks is None:
            open_.append(q)
        elif WHOLE_QUEUE not in tasks:
            budget, clear = _park(db, q, tasks, limit, now, budget)
            if clear:
                open_.append(q)
    return open_, held


def _park(
    db: sqlite3.Connection, queue: str, tasks: set[str], limit: int, now: float, budget: int
) -> tuple[int, bool]:
    """Park the due jobs of ``tasks`` ahead of the first ``limit`` others of each of ``queue``'s
    levels; return the budget left and whether every head is clear. (Jobs with limits: their
    group's head is parked by the claim that takes turns, see sqlite_limits.Claim.)"""
    level = -1
    while (row := db.execute(_LEVEL_ABOVE, {"queue": queue, "level": level}).fetchone())[0] is not None:
        if not _next_level(row[0], level):
            break
        level = row[0]
        free = 0  # the level's first due jobs of other tasks: they stay at its head
        while free < limit:
            head = db.execute(
                "SELECT rowid, task FROM conveyor_jobs WHERE state = 'pending' AND queue = ? AND priority = ?"
                " AND run_at <= ? AND grp IS NULL ORDER BY run_at, rowid LIMIT ? OFFSET ?",
                (queue, level, now, limit - free, free),
            ).fetchall()
            if not head:
                break
            held = [rowid for rowid, task in head if task in tasks][:budget]
            if held:
                marks = ",".join("?" * len(held))
                db.execute(f"UPDATE conveyor_jobs SET state = 'parked' WHERE rowid IN ({marks})", held)
                budget -= len(held)
                if budget <= 0:
                    return 0, False
            free += len(head) - len(held)
    return budget, True


def _next_level(found: Any, level: int) -> bool:
    """Whether a probe for the level above ``level`` found one. SQLite orders text and blobs
    after every number, and a corrupt row's text priority that reads as a number (' 5') is
    "above" itself: following it would probe the same row forever. Whole levels only, rising."""
    return type(found) is int and found > level


def _check_caps(
    db: sqlite3.Connection, messages: Sequence[Message], out: Sequence[Enqueued], caps: dict[str, int]
) -> None:
    """Raise QueueFull (the caller rolls back) if the insert took a capped queue past its cap.
    Writers hold the write lock in turn, so the count is exact: no producer overshoots."""
    for queue, cap in caps.items():
        adding = backpressure.added(messages, out, queue)
        if adding:
            (after,) = db.execute(_COUNT_PENDING, (queue, backpressure.count_limit(cap, adding))).fetchone()
            backpressure.check(queue, after, cap, adding)


def _job(row: Sequence[Any], now: float) -> JobInfo:
    return job_row(row, now, errors_of(row[14]))
