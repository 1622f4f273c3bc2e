"""The broker contract: what every storage backend implements.

Each operation is atomic and batch-first (one round trip per call). Time-dependent operations
take ``now``: ``None`` means the store's clock (the database's or Redis's where the store has
one); tests pass explicit times to exercise scheduling and lease expiry without sleeping. No
operation reads the caller's clock where the store has one: due times, leases, retention and the
worker registry all run on the store's. SQLite has no clock of its own: its host's is the store's.

Ownership: every exit from ``running`` (ack, extend, release) presents the fencing token handed
out by ``reserve``; a stale token changes nothing and is reported as lost.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from conveyor import headers as stored_headers
from conveyor import progress as stored_progress
from conveyor import redact, validate
from conveyor.errors import ConfigurationError, DuplicateId
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

log = logging.getLogger("conveyor.store")

#: (job id, fencing token) of a lease held by a worker.
Lease = tuple[str, int]


class Broker(abc.ABC):
    """Storage backend. Thread-safe: one instance may be shared by the threads of a process."""

    #: The URL with any password replaced, safe to log.
    display_url: str
    #: Seconds finished (succeeded or cancelled) jobs, their results and their keys are kept.
    retention: float
    #: Whether writes from two threads proceed at once. A worker then reserves on a thread of its
    #: own, beside the one that acknowledges; where writers take turns (SQLite), a second thread
    #: would only split the batches that the turns amortize.
    parallel_writes: bool = True

    @abc.abstractmethod
    def enqueue(
        self,
        messages: Sequence[Message],
        now: float | None = None,
        connection: Any = None,
        max_queued: Mapping[str, int] | None = None,
    ) -> list[Enqueued]:
        """Store messages as ready or scheduled, deduplicating by key.

        Ids are unique across the store. A message whose id is held by another job, of any
        queue, or by another message of the batch raises DuplicateId, storing nothing of the
        batch; a message whose key resolves to a job (below) is not refused for its id. The
        same message again (same id, queue, task, payload, priority, max_attempts and key: an
        enqueue sent again after its reply was lost) is no other job: it stores nothing and
        returns its job as created. A Redis Cluster checks ids across slots before its scripts
        run, not atomically with them (see the Redis broker).

        Keys are scoped to a queue. A message whose key is held by a job of its queue with the
        same task and payload returns that job (``created=False``), also after the job finished,
        until its retention ends; a dead job holds its key until it is purged. Raises
        KeyConflict, storing nothing of the batch, if a key is held by a job with a different
        task or payload, also when other producers race for the batch's keys. A Redis Cluster
        refuses (ConfigurationError, storing nothing) a batch with keys spanning hash slots:
        its scripts are atomic only within a slot.

        ``connection``: a connection to the store's own database with a transaction open (a
        ``sqlite3.Connection`` on SQLite, a psycopg connection on PostgreSQL); the messages are
        written in that transaction and exist if and only if the caller commits it. Backends
        without such transactions raise ConfigurationError.

        ``max_queued``: caps by queue name (backpressure). Raises QueueFull, storing nothing of
        the batch, if a capped queue would hold more than its cap of pending (ready or
        scheduled) jobs once the batch's new jobs are added; a message that an idempotency key
        resolves to an existing job adds none. The check is atomic with the insert (see each
        store for how, and docs/security.md). Queues not named pay nothing for it. A Redis
        Cluster refuses (ConfigurationError, storing nothing) a batch with a capped queue
        spanning hash slots, as one with keys.
        """

    @abc.abstractmethod
    def reserve(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
        fairness: Fairness,
        now: float | None = None,
    ) -> list[Delivery]:
        """Lease up to ``limit`` due tasks, split across priority levels by ``fairness``.

        Each returned delivery's attempt is already counted and its token is new. Only jobs that
        their limits allow now are claimed (docs/flow-control.md): each claim spends a token of
        every rate-limited key of the job (and of its queue's limit) and holds a slot of every
        concurrency-limited one until the job leaves ``running``. Within a level, the groups
        of jobs with the same limit keys take turns, one job per turn, oldest due first.
        """

    @abc.abstractmethod
    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block until work may be ready: a wake-up from a producer (or from an outcome that
        frees a concurrency slot), the earliest due time of a scheduled task in ``queues``, the
        next token of a throttled group there, or ``timeout`` seconds, whichever comes first."""

    @abc.abstractmethod
    def ack(self, outcomes: Sequence[Outcome], now: float | None = None) -> list[AckStatus]:
        """Apply a batch of outcomes, each atomically with its effects; one status per outcome.

        An outcome that ends a running job frees its limits' concurrency slots (only when its
        token is current: a lost outcome frees nothing). ``throttled`` gives the attempt back
        (``attempt - 1``), counts it in ``Delivery.throttled``, and closes every key of the
        job's limits until its due time. ``snoozed`` gives the attempt back too, closes nothing,
        and counts the snooze on the job; the snooze past ``Outcome.max_snoozes`` buries it.
        ``cancelled`` ends the job ``cancelled`` (its effects and follow-ups are not applied).
        Every outcome that lets a running job go clears its cancel request."""

    @abc.abstractmethod
    def extend(self, leases: Sequence[Lease], lease: float, now: float | None = None) -> list[str]:
        """Heartbeat: push the leases' expiry to ``now + lease``; return the ids whose lease is lost."""

    @abc.abstractmethod
    def set_progress(self, updates: Sequence[tuple[str, int, str]], now: float | None = None) -> int:
        """Store the progress of running jobs: (job id, token, progress as ``conveyor.progress.
        encode`` makes it) each, fenced like an ack (a job no longer running under that token is
        left as it is). Returns how many were stored."""

    @abc.abstractmethod
    def release(self, leases: Sequence[Lease]) -> int:
        """Return leased tasks to ready without counting their attempt (their limits' tokens stay
        spent, their slots are freed); return how many."""

    @abc.abstractmethod
    def reclaim(self, now: float | None = None) -> Reclaimed:
        """Make tasks with an expired lease ready again, or dead ("worker lost") when their
        attempts are spent; each records a WorkerLost error for the lost attempt."""

    @abc.abstractmethod
    def cancel(self, job_id: str, now: float | None = None) -> bool:
        """Cancel a job that has not started; False if it is running or finished."""

    @abc.abstractmethod
    def request_cancel(self, job_id: str, grace: float, now: float | None = None) -> CancelAnswer:
        """Cancel a job whatever its state, in one atomic step (docs/job-control.md).

        A pending job (scheduled, ready, parked) is cancelled at once (``cancelled``), as by
        ``cancel``. A running one is marked: the request (with ``grace``, the seconds a sync task
        gets to stop on its own) is stored beside its lease, reported by ``cancelling`` and
        ``get`` (``JobInfo.cancelling``), and the worker holding the lease is woken in
        ``wait_cancel``; the answer is ``cancelling`` (also when it was marked already). A
        marked job's ``retry``, ``throttled`` or ``snoozed`` outcome ends it ``cancelled``;
        ``succeeded`` and ``dead`` win over the request. A finished job is left alone
        (``finished``); an unknown id answers ``missing``."""

    @abc.abstractmethod
    def cancelling(self, leases: Sequence[Lease]) -> dict[str, float]:
        """Of ``leases``, those still held (running with that token) whose job has a cancel
        request, with the request's grace seconds, by job id."""

    @abc.abstractmethod
    def wait_cancel(self, worker: str, timeout: float) -> bool:
        """Block until a cancel request may have been stored for a job leased to ``worker``
        (``request_cancel`` wakes it on the store's wake-up channel) or ``timeout`` seconds
        pass; True if woken. A wake-up sent while no thread waits ends the next wait at once,
        except before the first wait (which returns True at once: look with ``cancelling``)."""

    @abc.abstractmethod
    def get(self, job_id: str, now: float | None = None) -> JobInfo | None:
        """One job with its payload, result and error history, or None."""

    @abc.abstractmethod
    def stats(self, queues: Sequence[str] | None = None, now: float | None = None) -> list[QueueStats]:
        """Counts per queue, state and priority (all queues when ``queues`` is None)."""

    @abc.abstractmethod
    def jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        task: str | None = None,
        limit: int = 100,
        offset: int = 0,
        now: float | None = None,
    ) -> list[JobInfo]:
        """Jobs filtered by queue, state (any reported state) and task name.

        Order: ``scheduled`` and ``ready`` by due time, ``running`` by start, finished states
        most recently finished first; without a state, most recently enqueued first.
        """

    def dead(
        self, queue: str | None = None, task: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[JobInfo]:
        """Jobs in the dead letter queue, most recently dead first."""
        return self.jobs(queue=queue, state="dead", task=task, limit=limit, offset=offset)

    @abc.abstractmethod
    def set_limit(self, queue: str, rule: Rule) -> None:
        """Keep a run-time limit of ``queue``: ``rule.key`` "" is the queue's own limit (every
        job of the queue counts), any other key overrides that key's declared rule in the queue.
        Applies from the next claim on every worker, and wakes waiting workers."""

    @abc.abstractmethod
    def clear_limit(self, queue: str, key: str) -> bool:
        """Forget a run-time limit (declared rules apply again); False if none was set."""

    @abc.abstractmethod
    def limits(self, queue: str | None = None, now: float | None = None) -> list[LimitInfo]:
        """Every limit key of ``queue`` (all queues when None) that has a run-time rule, a job
        running, a bucket not full, a throttle, or queued jobs: by queue, then key."""

    @abc.abstractmethod
    def time(self) -> float:
        """The store's clock now (Unix seconds): what ``now=None`` means to every operation."""

    @abc.abstractmethod
    def beat(self, worker: WorkerInfo, ttl: float, now: float | None = None) -> None:
        """Record a worker's heartbeat; ``workers`` lists it for ``ttl`` seconds from ``now``
        (never from ``worker.last_beat``, which is the worker's own clock). Entries silent for
        an hour past their expiry, by the same clock, are deleted."""

    @abc.abstractmethod
    def workers(self, now: float | None = None) -> list[WorkerInfo]:
        """Workers whose last heartbeat is within its ttl, by id."""

    @abc.abstractmethod
    def replay(
        self, ids: Sequence[str] | None = None, queue: str | None = None, now: float | None = None
    ) -> int:
        """Make dead jobs ready again with attempts reset (all dead jobs when ``ids`` is None),
        optionally into another queue; return how many. Raises KeyConflict, changing nothing,
        if a replayed job's idempotency key is held by another job of the target queue."""

    @abc.abstractmethod
    def purge(self, ids: Sequence[str] | None = None) -> int:
        """Delete dead jobs (all of them when ``ids`` is None); return how many."""

    @abc.abstractmethod
    def expire(self, now: float | None = None, limit: int = 1000) -> int:
        """Delete up to ``limit`` finished jobs whose retention has passed; return how many."""

    @abc.abstractmethod
    def pause(self, queue: str, task: str | None = None, now: float | None = None) -> None:
        """Stop reservations from ``queue`` (only of ``task`` in it, if given) until ``resume``.

        Stored, so every handle on the store obeys it, and atomic with ``reserve``: once this
        returns, no reservation on any worker claims a job it covers. Enqueues, acks of running
        jobs and every other operation carry on; a covered job stays pending (reported ready
        once due). Idempotent: pausing again keeps the first pause's time. Raises
        ConfigurationError, storing nothing, for a queue or task name no message could carry.
        """

    @abc.abstractmethod
    def resume(self, queue: str, task: str | None = None) -> None:
        """Undo ``pause(queue, task)`` (a no-op if it is not paused) and wake the queue's waiting
        workers. A whole-queue pause and the pause of a task in it are separate: a job is
        reserved only while neither covers it."""

    @abc.abstractmethod
    def paused(self, queues: Sequence[str] | None = None) -> list[Pause]:
        """The stored pauses (of ``queues`` only, if given), by queue then task (whole queue
        first)."""

    def own_connection(self) -> None:  # noqa: B027 - a no-op unless a store pools connections
        """Give the calling thread a connection of its own from now on, outside any shared pool,
        so its calls (a worker's heartbeats) never wait for a connection another thread holds.
        A no-op where a call never waits for one (SQLite: a connection per thread; Redis: a
        pool without a limit)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and wake-up listeners."""


#: The task stored for a pause of a whole queue: no task is named so (validate.MAX_TASK_NAME).
WHOLE_QUEUE = ""
#: Jobs of paused tasks a reservation sets aside at most per call (see docs/flow-control.md).
PARK_BUDGET = 1000


def pause_target(queue: object, task: object) -> tuple[str, str]:
    """The stored (queue, task) of a pause, ``task`` "" for the whole queue; ConfigurationError
    for a name no message could carry (validate's rules)."""
    if type(queue) is not str or not validate.QUEUE_NAME.fullmatch(queue):
        raise ConfigurationError(f"invalid queue name {str(queue)[:40]!r}: use 1-128 of A-Z a-z 0-9 _ . : -")
    if task is None:
        return queue, WHOLE_QUEUE
    if type(task) is not str or not 0 < len(task) <= validate.MAX_TASK_NAME:
        raise ConfigurationError(
            f"invalid task name {str(task)[:40]!r}: a non-empty str of at most {validate.MAX_TASK_NAME} characters"
        )
    return queue, task


def pauses(rows: Sequence[Sequence[Any]]) -> list[Pause]:
    """Stored (queue, task, since) rows as Pause records, in the listing order."""
    out = [Pause(queue=q, task=t or None, since=float(s)) for q, t, s in rows]
    out.sort(key=lambda p: (p.queue, p.task or ""))
    return out


def claimed(rows: list[Any]) -> list[Delivery]:
    """Rows of a SQL claim as deliveries, most urgent level first, then by due time. A row holds
    id, task, queue, priority, payload, attempt, max_attempts, token, run_at, enqueued_at, key
    and optionally throttled: the order both SQL backends' claims return them in. A field of the wrong type (SQLite keeps
    whatever was written) is read as its type (see ``as_text`` and the others), so a corrupt row
    costs only its own job: the worker buries it, or runs what it can read."""
    out = [
        Delivery(
            id=as_text(r[0]),
            task=as_text(r[1]),
            queue=as_text(r[2]),
            priority=as_int(r[3]),
            payload=as_blob(r[4]),
            attempt=as_int(r[5]),
            max_attempts=as_int(r[6]),
            token=as_int(r[7]),
            run_at=as_float(r[8]),
            enqueued_at=as_float(r[9]),
            key=None if r[10] is None else as_text(r[10]),
            throttled=as_int(r[11]) if len(r) > 11 and r[11] is not None else 0,
            headers=None if len(r) < 13 or r[12] is None else stored_headers.decode(r[12]),
        )
        for r in rows
    ]
    out.sort(key=_delivery_order)
    return out


def _delivery_order(d: Delivery) -> tuple[int, float]:
    return d.priority, -math.inf if math.isnan(d.run_at) else d.run_at


#: The task name a delivery gets when its stored record does not parse (the Redis store's
#: reserve script names it so): no application registers it, and the worker buries the job at once.
CORRUPT_TASK = "conveyor:corrupt-record"

#: The fields of an error record (one per failed attempt).
ERROR_FIELDS = ("attempt", "type", "message", "traceback", "worker", "at")


def corrupt_error(message: str) -> dict[str, Any]:
    """An error record saying that part of a stored record could not be read."""
    return {
        "attempt": None,
        "type": "CorruptRecord",
        "message": message,
        "traceback": None,
        "worker": None,
        "at": None,
    }


def duplicate_id(job_id: str) -> DuplicateId:
    """The refusal of an enqueue whose message reuses the id of another job (every store's)."""
    return DuplicateId(
        f"job id {job_id!r} is held by another job (or another message of the batch): nothing of"
        " the batch was stored; leave ids to conveyor.ids.new_id()"
    )


def resends(m: Message, stored: Sequence[Any]) -> bool:
    """Whether ``m`` is the message stored as ``stored`` (queue, task, payload, priority,
    max_attempts, key, as a row holds them): the same enqueue sent again, not another job."""
    queue, task, payload, priority, max_attempts, key = stored
    return (queue, task, bytes(payload), priority, max_attempts, key) == (
        m.queue,
        m.task,
        m.payload,
        m.priority,
        m.max_attempts,
        m.key,
    )


def worker_infos(rows: Iterable[tuple[Any, Any]]) -> list[WorkerInfo]:
    """Stored worker registry entries, (worker id, info JSON) each, as WorkerInfo; an entry that
    does not decode (not JSON, or not a WorkerInfo) is left out with a warning naming its id, so
    one corrupt entry never fails a listing of the workers."""
    out: list[WorkerInfo] = []
    for worker_id, info in rows:
        try:
            out.append(msgspec.json.decode(info, type=WorkerInfo))
        except (msgspec.DecodeError, TypeError, ValueError, RecursionError) as exc:
            shown = worker_id.decode(errors="replace") if isinstance(worker_id, bytes) else str(worker_id)
            log.warning(
                "worker registry entry %s is corrupt and is left out: %s",
                redact.printable(shown[:100]),
                redact.printable(str(exc)[:200]),
            )
    return out


def errors_of(stored: Any) -> list[dict[str, Any]]:
    """A stored error history (JSON text) as a list of records (see ``error_records``); a corrupt
    one as one record saying so."""
    try:
        errors = msgspec.json.decode(stored)
    except (msgspec.DecodeError, TypeError, RecursionError):
        shown = stored if isinstance(stored, str) else repr(stored)
        return [corrupt_error(f"stored error history is not JSON: {shown[:200]}")]
    return error_records(errors)


def error_records(errors: Any) -> list[dict[str, Any]]:
    """A decoded error history as a list of records, each with every field of ERROR_FIELDS (None
    where the stored record lacks it); anything but a list of objects as one record saying so."""
    if isinstance(errors, list) and all(isinstance(e, dict) for e in errors):
        for e in errors:
            if len(e) < len(ERROR_FIELDS) or any(f not in e for f in ERROR_FIELDS):
                for f in ERROR_FIELDS:
                    e.setdefault(f, None)
        return errors
    try:
        shown = msgspec.json.encode(errors).decode()
    except (TypeError, RecursionError):
        shown = type(errors).__name__
    return [corrupt_error(f"stored error history is not a list of records: {shown[:200]}")]


#: States a SQL row may hold; any other reads as ``dead`` (see ``job_row``).
_ROW_STATES = frozenset({"pending", "running", "succeeded", "dead", "cancelled"})


def job_row(
    row: Sequence[Any], now: float, errors: list[dict[str, Any]], headers: Any = None, progress: Any = None
) -> JobInfo:
    """A SQL job row as a JobInfo; a pending job is ready once due at ``now``. A row holds id,
    task, queue, priority, state, payload, attempt, max_attempts, run_at, enqueued_at, started_at,
    finished_at, key, result, errors (decoded by the caller: ``errors``), worker, lease_until,
    whether a cancel request holds for its run (true only while it runs); ``headers`` and
    ``progress`` are the job's as stored (None: none).
    Fields of the wrong type are read as their type; a state no version of Conveyor writes is
    listed as ``dead`` with a CorruptRecord error saying what was stored."""
    state = as_text(row[4])
    run_at = as_float(row[8])
    if state in ("pending", "parked"):  # parked: pending, set aside while its task is paused
        state = "ready" if run_at <= now else "scheduled"
    elif state not in _ROW_STATES:
        errors = [*errors, corrupt_error(f"unknown stored state {state[:100]!r}")]
        state = "dead"
    return JobInfo(
        id=as_text(row[0]),
        task=as_text(row[1]),
        queue=as_text(row[2]),
        priority=as_int(row[3]),
        state=state,  # type: ignore[arg-type]  # checked above
        payload=as_blob(row[5]),
        attempt=as_int(row[6]),
        max_attempts=as_int(row[7]),
        run_at=run_at,
        enqueued_at=as_float(row[9]),
        started_at=None if row[10] is None else as_float(row[10]),
        finished_at=None if row[11] is None else as_float(row[11]),
        key=None if row[12] is None else as_text(row[12]),
        result=None if row[13] is None else as_blob(row[13]),
        errors=errors,
        worker=None if row[15] is None else as_text(row[15]),
        lease_until=None if row[16] is None else as_float(row[16]),
        cancelling=state == "running" and bool(row[17]),
        headers=None if headers is None else stored_headers.decode(headers),
        progress=None if progress is None else stored_progress.decode(progress),
    )


# A stored field as the type the contract gives it, whatever the store held (SQLite keeps any
# value in any column; a PostgreSQL column may hold NaN). Never ``bytes(n)`` of a number, which
# allocates n bytes.


def as_text(value: Any) -> str:
    """Text as itself, bytes decoded (U+FFFD where not UTF-8), anything else as its digits."""
    if type(value) is str:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def as_blob(value: Any) -> bytes:
    """Bytes as themselves, text as UTF-8, a number as its digits (never n zero bytes)."""
    if type(value) is bytes:
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    return b"" if value is None else str(value).encode()


def as_int(value: Any) -> int:
    """An int as itself, a finite float truncated, digits parsed; anything else 0."""
    if type(value) is int:
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else 0
    if isinstance(value, str | bytes):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


def as_float(value: Any) -> float:
    """A float as itself, an int converted, a number's text parsed; anything else NaN."""
    if type(value) is float:
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str | bytes):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan
