"""The running job's context: who it is, and effects that commit with its acknowledgement."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from conveyor import progress as _progress
from conveyor.errors import Snooze
from conveyor.records import Delivery, Message, Outcome, Progress

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("conveyor_job")


class JobContext:
    """What a running task knows about itself; get it with :func:`current_job`.

    Effects are buffered and applied by the broker in the same transaction as the task's
    acknowledgement: they happen exactly once, and not at all if the task fails or its lease was
    lost to another worker.
    """

    def __init__(
        self,
        delivery: Delivery,
        worker: str,
        prepare: Callable[[list[Message]], list[Message]] | None = None,
        report: Callable[[str, int, Progress], None] | None = None,
    ) -> None:
        self.delivery = delivery
        #: Id of the worker running the task.
        self.worker = worker
        self.effects: list[tuple[Any, ...]] = []
        self.enqueues: list[Message] = []
        #: Set by the worker once the job's cancel request reached it (see ``cancelled``).
        self.cancel_requested = False
        #: The application's enqueue hooks applied to follow-up messages, or None without any.
        self._prepare = prepare
        #: Where progress reports go (the worker's conveyor.progress.Reporter), or None.
        self._report = report
        #: The outcome of a failure decided inside the run hooks (see conveyor.hooks).
        self.failure: Outcome | None = None

    @property
    def cancelled(self) -> bool:
        """Whether the job is being cancelled: a sync task may stop at a safe point (return or
        raise); after the cancel's grace the worker interrupts it (docs/job-control.md)."""
        return self.cancel_requested

    def snooze(self, delay: float) -> None:
        """Run the job again ``delay`` seconds later without counting an attempt: raises
        :class:`conveyor.Snooze` (statements after the call do not run)."""
        raise Snooze(delay)

    @property
    def id(self) -> str:
        """The job id."""
        return self.delivery.id

    @property
    def task(self) -> str:
        """The task's registered name."""
        return self.delivery.task

    @property
    def queue(self) -> str:
        """The queue the job was reserved from."""
        return self.delivery.queue

    @property
    def headers(self) -> Mapping[str, str]:
        """The job's headers (read-only; empty without any), as enqueue and its hooks set them."""
        h = self.delivery.headers
        return _NO_HEADERS if h is None else MappingProxyType(h)

    @property
    def attempt(self) -> int:
        """1 on the first run, 2 on the first retry, and so on."""
        return self.delivery.attempt

    @property
    def max_attempts(self) -> int:
        """Attempts allowed in all."""
        return self.delivery.max_attempts

    @property
    def key(self) -> str | None:
        """The idempotency key the job was enqueued with; pass it on to outside systems."""
        return self.delivery.key

    @property
    def token(self) -> int:
        """The fencing token of this run; unique per claim of the job."""
        return self.delivery.token

    def progress(self, value: float, message: str | None = None) -> None:
        """Report how far the job is: ``value`` from 0 to 1 and an optional short message (at
        most 200 characters), read with ``job.progress()``. Cheap to call often: the worker
        writes a job's latest report at most a few times per second; a report made while the
        previous one is being written replaces it.

        Raises:
            ConfigurationError: a value outside 0..1 or a message too long.
        """
        p = _progress.checked(value, message)
        if self._report is not None:
            self._report(self.delivery.id, self.delivery.token, p)

    def execute(self, statement: str, params: Any = ()) -> None:
        """Run ``statement`` (SQL, with ``params``) atomically with the acknowledgement.

        The statement runs in the store's own database (the SQLite file on the embedded backend),
        after the task returns; its failure fails the attempt, which is retried by its policy.
        """
        self.effects.append((statement, params))

    def enqueue(self, message: Message) -> None:
        """Enqueue ``message`` (from ``task.message(...)``) only if this task succeeds."""
        if self._prepare is not None:
            self.enqueues.extend(self._prepare([message]))
        else:
            self.enqueues.append(message)


def current_job() -> JobContext:
    """The context of the task running in this thread or asyncio task.

    Raises:
        LookupError: called outside a running task.
    """
    return _current.get()


def bind(ctx: JobContext) -> contextvars.Token[JobContext]:
    """Make ``ctx`` the current job of this thread or asyncio task."""
    return _current.set(ctx)


def unbind(token: contextvars.Token[JobContext]) -> None:
    """Undo :func:`bind`."""
    _current.reset(token)
