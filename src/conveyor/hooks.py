"""Hooks (middleware): code of your own around enqueues and runs, and on retries and deaths.

A hook is an instance of a :class:`Hook` subclass that overrides what it needs; the
application keeps them in one ordered list, ``app.hooks`` (the first is the outermost). See
docs/hooks.md.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import msgspec

from conveyor import context
from conveyor.records import Message

if TYPE_CHECKING:
    from conveyor.context import JobContext

log = logging.getLogger("conveyor.hooks")
T = TypeVar("T")


class Hook:
    """Base class of hooks; every method does nothing until overridden.

    ``enqueue`` and ``run`` return context managers (write them with
    ``@contextlib.contextmanager``): code before their ``yield`` runs before, code after it
    runs after, and an exception raised inside reaches them at the ``yield``.
    """

    @contextlib.contextmanager
    def enqueue(self, messages: list[Message]) -> Iterator[list[Message]]:
        """Around storing a batch of messages (a single ``enqueue`` is a batch of one).

        Yield the messages to store: these, or copies with headers added (:func:`with_headers`).
        Raise to refuse the batch: nothing of it is stored and the caller gets the exception.
        Also called for the follow-up messages a task enqueues with ``current_job().enqueue``
        (entered and left at once; they are stored with the task's acknowledgement).
        """
        yield messages

    @contextlib.contextmanager
    def run(self, job: JobContext) -> Iterator[None]:
        """Around one attempt of a job, in the thread (or asyncio task) that runs it, with
        ``current_job()`` set. An exception of the task reaches the ``yield``; re-raise it (a
        context manager made by ``contextlib.contextmanager`` does). An exception raised by the
        hook itself fails the attempt like one of the task."""
        yield

    def retry(self, job: JobContext, error: BaseException, delay: float) -> None:
        """A failed attempt will be retried ``delay`` seconds from now. Called inside the run
        hooks (before their exit sees the error), or, for a timed-out sync task, from the
        worker's event loop. An exception raised here is logged and ignored."""

    def dead(self, job: JobContext, error: BaseException) -> None:
        """A failed attempt sends the job to the dead letter queue (its last attempt, or an error
        its retry policy does not retry). Called as :meth:`retry` is."""


def with_headers(message: Message, **headers: str) -> Message:
    """A copy of ``message`` with ``headers`` added to its own (theirs win on the same key)."""
    return msgspec.structs.replace(message, headers={**(message.headers or {}), **headers})


def overriding(hooks: Sequence[Hook], method: str) -> tuple[Hook, ...]:
    """The hooks of ``hooks`` whose class overrides ``method`` of :class:`Hook`."""
    base = getattr(Hook, method)
    return tuple(h for h in hooks if getattr(type(h), method, base) is not base)


def around_enqueue(hooks: Sequence[Hook], messages: list[Message], store: Callable[[list[Message]], T]) -> T:
    """``store(messages)`` inside the enqueue hooks, the first one outermost."""
    active = overriding(hooks, "enqueue")
    if not active:
        return store(messages)
    with contextlib.ExitStack() as stack:
        for hook in active:
            messages = list(stack.enter_context(hook.enqueue(messages)))
        return store(messages)
    raise AssertionError("unreachable: a hook swallowed the store's exception")  # pragma: no cover


def prepared(hooks: Sequence[Hook], messages: list[Message]) -> list[Message]:
    """``messages`` as the enqueue hooks make them, stored later by someone else."""
    return around_enqueue(hooks, messages, lambda batch: batch)


class Hooks:
    """The hooks a worker calls, sorted once by what they override (an empty one costs a
    check per job)."""

    __slots__ = ("dead", "retry", "run")

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.run = overriding(hooks, "run")
        self.retry = overriding(hooks, "retry")
        self.dead = overriding(hooks, "dead")

    def failed(self, job: JobContext, error: BaseException, kind: str, delay: float) -> None:
        """Tell the retry or dead hooks about a failed attempt; their errors are logged."""
        for hook in self.retry if kind == "retry" else self.dead if kind == "dead" else ():
            try:
                if kind == "retry":
                    hook.retry(job, error, delay)
                else:
                    hook.dead(job, error)
            except Exception:
                log.exception("job %s: the %s hook %r failed", job.id, kind, hook)


class JobLogFilter(logging.Filter):
    """Adds the running job to every log record: ``job_id``, ``job_task``, ``job_queue`` and
    ``job_attempt`` (``-`` outside a task), for a format such as
    ``"%(levelname)s %(job_task)s[%(job_id)s] %(message)s"``. Add it to a handler:
    ``handler.addFilter(JobLogFilter())``; it never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            job = context.current_job()
        except LookupError:
            record.job_id = record.job_task = record.job_queue = record.job_attempt = "-"
        else:
            record.job_id, record.job_task, record.job_queue = job.id, job.task, job.queue
            record.job_attempt = job.attempt
        return True
