"""Backpressure: the ``max_queued`` check every store makes atomically with its insert.

A capped queue may hold at most its cap of pending (ready or scheduled) jobs; a batch that
would take it past that is refused whole with QueueFull. The stores count differently (Redis
reads its counts hash, the SQL stores count the queue's pending rows after the insert, in its
transaction, and roll back); what a refusal means is decided here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from conveyor.errors import QueueFull
from conveyor.records import Enqueued, Message


def capped(messages: Sequence[Message], max_queued: Mapping[str, int] | None) -> dict[str, int]:
    """The caps of the batch's queues that have one, by queue, in a stable (sorted) order."""
    if not max_queued:
        return {}
    return {q: max_queued[q] for q in sorted({m.queue for m in messages}) if q in max_queued}


def added(messages: Sequence[Message], stored: Sequence[Enqueued], queue: str) -> int:
    """How many new jobs the batch adds to ``queue`` (a key matched to an existing job adds none)."""
    return sum(1 for m, e in zip(messages, stored, strict=True) if e.created and m.queue == queue)


def count_limit(cap: int, adding: int) -> int:
    """How far to count a queue's pending jobs after an insert: one past the most it may hold
    plus the batch, so a queue far past its cap costs no more than one at it."""
    return cap + adding + 1


def check(queue: str, after: int, cap: int, adding: int) -> None:
    """Raise QueueFull if ``queue`` holds ``after`` pending jobs, ``adding`` of them this batch's,
    and that is more than ``cap``. A batch that adds nothing is never refused."""
    if adding and after > cap:
        raise QueueFull(queue, after - adding, cap, adding)
