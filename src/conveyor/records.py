"""The immutable records that cross the broker contract."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

#: States a job is reported in. ``scheduled`` and ``ready`` are both "pending" in storage:
#: which one depends only on whether the due time has passed.
State = Literal["scheduled", "ready", "running", "succeeded", "dead", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "dead", "cancelled"})
#: What a cancel request found and did (docs/job-control.md): ``cancelled`` (it had not
#: started; it never runs), ``cancelling`` (it runs: its worker was told), ``finished`` (it had
#: ended already; nothing changed) or ``missing`` (no such job).
CancelAnswer = Literal["cancelled", "cancelling", "finished", "missing"]


class Cancelled(str):
    """What ``Job.cancel()`` did: ``"cancelled"``, ``"cancelling"``, ``"finished"`` or
    ``"missing"`` (a :data:`CancelAnswer`), compared as the string. It is true only for
    ``"cancelled"``, so code written when ``cancel()`` returned a bool (whether the job was
    cancelled before it started) keeps its meaning: ``if job.cancel(): ...``."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return self == "cancelled"


class Rule(msgspec.Struct, frozen=True, array_like=True):
    """One limit of a job as rendered at enqueue: its key and what the key allows.

    ``rate`` is starts per second (0: no rate limit), ``burst`` the tokens a key saves when idle,
    ``concurrency`` how many may run at once (0: no concurrency limit). See docs/flow-control.md.
    """

    key: str
    rate: float = 0.0
    burst: int = 1
    concurrency: int = 0


class Message(msgspec.Struct, frozen=True):
    """A task call ready to be stored; built by ``task.message(...)``."""

    #: Unique id, chosen by the producer so a batch needs no read-back.
    id: str
    #: Registered task name.
    task: str
    queue: str
    #: Level index, 0 is the most urgent.
    priority: int
    #: Encoded ``[args, kwargs]``, or ``[args, kwargs, typed]`` (see ``conveyor.arguments``).
    payload: bytes
    #: Seconds after the store's "now" at which the task is due (used when ``run_at`` is None).
    delay: float = 0.0
    #: Absolute due time (Unix seconds), or None.
    run_at: float | None = None
    #: Idempotency key, or None.
    key: str | None = None
    max_attempts: int = 5
    #: The task's limits rendered for this call (see conveyor.limits); the job's group, which
    #: fairness takes turns between, is their keys (``group_of``).
    limits: tuple[Rule, ...] = ()
    #: Job headers: a small map of str to str stored with the job (see conveyor.headers), or
    #: None for none.
    headers: dict[str, str] | None = None


class Progress(msgspec.Struct, frozen=True, array_like=True):
    """How far a running job says it is: ``value`` from 0 to 1, and a short ``message``."""

    value: float
    message: str | None = None


class Enqueued(msgspec.Struct, frozen=True):
    """What ``enqueue`` returns per message: the stored id and whether it was created now."""

    id: str
    created: bool


class Delivery(msgspec.Struct, frozen=True):
    """A reserved task, leased to one worker until its lease runs out."""

    id: str
    task: str
    queue: str
    priority: int
    payload: bytes
    #: 1 for the first run; counted when the task is claimed.
    attempt: int
    max_attempts: int
    #: Fencing token: unique per claim; every exit from running must present it.
    token: int
    #: When the task was due.
    run_at: float
    enqueued_at: float
    key: str | None = None
    #: Times this job ended an attempt with RateLimited (not counted as attempts).
    throttled: int = 0
    #: The job's headers, or None.
    headers: dict[str, str] | None = None


class Outcome(msgspec.Struct, frozen=True):
    """How a delivery ended, reported in batches through ``Broker.ack``.

    ``kind`` is ``succeeded`` (with ``result``, ``effects`` and follow-up ``enqueues`` committed
    atomically with it), ``retry`` (due again ``delay`` seconds from the store's now, ``error``
    recorded), ``dead`` (moved to the dead letter queue, ``error`` recorded), ``throttled``
    (due again ``delay`` seconds from the store's now with its attempt not counted, and every key
    of its limits closed until then; ``error`` recorded), ``cancelled`` (ended ``cancelled``
    after a cancel request, nothing committed, ``error`` recorded) or ``snoozed`` (due again
    ``delay`` seconds from the store's now with its attempt not counted and its snoozes counted,
    nothing recorded; once the job snoozed more than ``max_snoozes`` times, dead with ``error``).

    ``retry``, ``throttled`` and ``snoozed`` of a job with a stored cancel request end it
    ``cancelled`` instead (docs/job-control.md).
    """

    id: str
    token: int
    kind: Literal["succeeded", "retry", "dead", "throttled", "cancelled", "snoozed"]
    result: bytes | None = None
    delay: float = 0.0
    error: dict[str, Any] | None = None
    #: Backend-specific operations to commit with the acknowledgement (SQL statements and
    #: parameters on SQL backends).
    effects: tuple[tuple[Any, ...], ...] = ()
    #: Tasks to enqueue in the same transaction as the acknowledgement.
    enqueues: tuple[Message, ...] = ()
    #: ``snoozed``: the snoozes a job may take; the one past it buries the job.
    max_snoozes: int = 0


class AckStatus(msgspec.Struct, frozen=True):
    """Per outcome: ``ok``, ``lost`` (the lease is no longer yours; nothing changed) or
    ``effects_failed`` (the effects raised ``error``; nothing committed, the lease is still held)."""

    status: Literal["ok", "lost", "effects_failed"]
    error: str | None = None


class JobInfo(msgspec.Struct, frozen=True):
    """Everything the store knows about one job."""

    id: str
    task: str
    queue: str
    priority: int
    state: State
    payload: bytes
    attempt: int
    max_attempts: int
    run_at: float
    enqueued_at: float
    #: When a worker's reservation for the latest attempt began (by the store's clock); the task
    #: itself begins later, once the reply has reached the worker and a task slot takes it.
    started_at: float | None
    finished_at: float | None
    key: str | None
    result: bytes | None
    #: One record per failed attempt: attempt, type, message, traceback, worker, at.
    errors: list[dict[str, Any]]
    worker: str | None = None
    lease_until: float | None = None
    #: Running with a cancel requested (docs/job-control.md): its worker stops it.
    cancelling: bool = False
    #: The job's headers (None: none); read by ``get``, not filled in by listings.
    headers: dict[str, str] | None = None
    #: The latest progress any attempt reported (None: none); read by ``get``.
    progress: Progress | None = None


class QueueStats(msgspec.Struct, frozen=True):
    """Counts of one queue: ``counts[state][priority]``, and the age of the oldest ready task."""

    queue: str
    counts: dict[str, dict[int, int]]
    oldest_ready_age: float | None
    #: Ready jobs that limits hold back now (counted among ``ready``): those of groups waiting
    #: for a token, a slot or a throttle's end as of the last claim that examined them, or all
    #: of them while the queue's own limit allows no start.
    throttled: int = 0

    def total(self, state: str) -> int:
        """Jobs in ``state`` over all priorities."""
        return sum(self.counts.get(state, {}).values())


class Pause(msgspec.Struct, frozen=True):
    """A stored pause: no job of ``queue`` (of ``task`` in it, if given) is reserved meanwhile."""

    queue: str
    #: The paused task, or None for the whole queue.
    task: str | None
    #: When it was paused, by the store's clock.
    since: float


class Reclaimed(msgspec.Struct, frozen=True):
    """Result of ``reclaim``: ids made ready again, and ids moved to the dead letter queue."""

    requeued: list[str]
    dead: list[str]


class WorkerInfo(msgspec.Struct, frozen=True):
    """A worker process as it reports itself with every heartbeat."""

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    #: Tasks leased to it right now.
    in_flight: int
    started_at: float
    last_beat: float
    #: Cumulative outcomes since it started: started, succeeded, retry, dead, lost.
    counts: dict[str, int]
    #: The same outcomes (succeeded, retry, dead, lost) per queue and priority level
    #: (``outcomes[queue][str(level)][outcome]``; str keys keep it plain JSON).
    outcomes: dict[str, dict[str, dict[str, int]]] = {}


class LimitInfo(msgspec.Struct, frozen=True):
    """One limit key of a queue as the store sees it now (``conveyor limits``).

    ``key`` is "" for the queue's own limit. ``rate``, ``burst`` and ``concurrency`` are the
    effective rule (0: none); ``override`` says a run-time limit set them. ``tokens`` is how
    many starts the bucket allows now (None without a rate), ``running`` the jobs holding a slot, ``closed_until`` the
    end of a RateLimited throttle (or None).
    """

    queue: str
    key: str
    rate: float
    burst: int
    concurrency: int
    override: bool
    running: int
    tokens: float | None
    closed_until: float | None = None
