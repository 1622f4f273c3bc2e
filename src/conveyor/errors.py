"""The exceptions Conveyor raises, and the one a task raises to ask for a retry."""

from __future__ import annotations


class ConveyorError(Exception):
    """Base class of every error Conveyor raises."""


class ConfigurationError(ConveyorError, ValueError):
    """A task definition, an enqueue option or a URL is invalid."""


class StoreUnavailable(ConveyorError):
    """The store did not answer: refused, unreachable or timed out. Trying later may succeed.

    The message names the store (its password redacted) and the cause, in one line.
    """


class ArgumentError(ConveyorError, TypeError):
    """The arguments do not fit the task function's signature."""


class SerializationError(ConveyorError, TypeError):
    """A value cannot be encoded or decoded with Conveyor's JSON serializer."""


class PayloadTooLarge(SerializationError):
    """The encoded arguments exceed the configured size limit."""


class ResultTooLarge(SerializationError):
    """A task's encoded return value exceeds its ``max_result``: the attempt fails, the result
    never reaches the store."""


class AckRefused(ConveyorError):
    """The store refused an attempt's outcome on its own, again and again, while it took
    others: the attempt is recorded as failed with this error instead."""


class KeyConflict(ConveyorError):
    """An idempotency key is already used by a task with a different payload."""


class DuplicateId(ConveyorError):
    """A message's id is held by another job (of any queue) or another message of its batch;
    nothing of the batch is stored. A message whose job exists as that very message (the same
    enqueue sent again) is no duplicate: it returns its job."""


class QueueFull(ConveyorError):
    """An enqueue would take a queue past its ``max_queued`` cap of pending (ready or scheduled)
    jobs; nothing of the batch was stored. Retry later, once workers have drained the queue.

    Attributes: ``queue``, ``queued`` (its pending jobs when the batch arrived), ``cap``, and
    ``adding`` (the new jobs the batch would have added to it).
    """

    def __init__(self, queue: str, queued: int, cap: int, adding: int) -> None:
        super().__init__(
            f"queue {queue!r} is full: {queued} jobs ready or scheduled, max_queued {cap};"
            f" refused a batch adding {adding} (nothing of it was stored)"
        )
        self.queue = queue
        self.queued = queued
        self.cap = cap
        self.adding = adding

    def __reduce__(self) -> tuple[type[QueueFull], tuple[str, int, int, int]]:
        return QueueFull, (self.queue, self.queued, self.cap, self.adding)


class UnknownTask(ConveyorError):
    """A task name is not registered in the application."""


class JobFailed(ConveyorError):
    """The job ended in the dead letter queue; ``errors`` holds every attempt's error."""

    def __init__(self, job_id: str, errors: list[dict[str, object]]) -> None:
        last = errors[-1] if errors else {}
        super().__init__(f"job {job_id} is dead: {last.get('type', '?')}: {last.get('message', '')}")
        self.job_id = job_id
        self.errors = errors


class JobCancelled(ConveyorError):
    """The job was cancelled: raised by ``Job.result()``, and inside a sync task that did not stop
    within its cancel's grace (docs/job-control.md)."""


class JobNotFound(ConveyorError):
    """No job with this id exists (it may have expired after its retention)."""


class Retry(Exception):
    """Raise from a task to retry it after ``delay`` seconds (counts as an attempt).

    Without a delay, the task's retry policy chooses the delay.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        if delay is not None and not (0 <= delay < float("inf")):
            raise ConfigurationError(f"Retry delay must be a finite number >= 0, got {delay!r}")
        self.delay = delay


class RateLimited(Exception):
    """Raise from a task when a service it calls says "too many requests": the attempt is not
    counted, the job is due again in ``retry_after`` seconds, and every key of its limits is
    closed to every worker until then (see docs/flow-control.md). A job throttled more than its
    task's ``max_throttles`` times goes to the dead letter queue."""

    def __init__(self, retry_after: float = 1.0, reason: str = "rate limited") -> None:
        super().__init__(reason)
        if not (0 <= retry_after <= 86400):
            raise ConfigurationError(
                f"RateLimited retry_after must be 0 to 86400 seconds, got {retry_after!r}"
            )
        self.retry_after = float(retry_after)


class Snooze(Exception):
    """Raise from a task to run it again ``delay`` seconds later without counting an attempt
    (nothing is recorded, no limit is closed); the snooze past its task's ``max_snoozes`` sends
    the job to the dead letter queue. See docs/job-control.md."""

    def __init__(self, delay: float = 1.0, reason: str = "snoozed") -> None:
        super().__init__(reason)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not (0 <= delay <= 86400 * 366):
            raise ConfigurationError(f"Snooze delay must be 0 to 31622400 seconds, got {delay!r}")
        self.delay = float(delay)


class NotReplicated(ConveyorError):
    """A write reached the Redis primary but fewer replicas than ``wait_replicas`` confirmed it
    within ``wait_timeout``: it is stored, but a failover before it replicates would lose it."""
