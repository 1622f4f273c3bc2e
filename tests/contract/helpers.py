"""Small builders shared by the contract tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conveyor.brokers import Broker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Delivery, JobInfo, Message, Outcome

#: The default levels high, normal, low.
WEIGHTS = (6, 3, 1)
HIGH, NORMAL, LOW = 0, 1, 2
PAYLOAD = b"[[],{}]"


def make_message(
    task: str = "t",
    queue: str = "q",
    priority: int = NORMAL,
    payload: bytes = PAYLOAD,
    delay: float = 0.0,
    run_at: float | None = None,
    key: str | None = None,
    max_attempts: int = 3,
) -> Message:
    return Message(
        id=new_id(),
        task=task,
        queue=queue,
        priority=priority,
        payload=payload,
        delay=delay,
        run_at=run_at,
        key=key,
        max_attempts=max_attempts,
    )


def enqueue(broker: Broker, now: float, *messages: Message) -> list[str]:
    """Enqueue messages that must all be new; return their ids."""
    out = broker.enqueue(messages, now=now)
    assert [e.created for e in out] == [True] * len(messages)
    return [e.id for e in out]


def reserve(
    broker: Broker,
    now: float,
    queues: Sequence[str] = ("q",),
    limit: int = 10,
    lease: float = 30.0,
    worker: str = "w1",
    fairness: Fairness | None = None,
) -> list[Delivery]:
    return broker.reserve(queues, limit, lease, worker, fairness or Fairness(WEIGHTS), now=now)


def reserve_one(broker: Broker, now: float, **kwargs: Any) -> Delivery:
    """Reserve exactly one task (asserting there was one)."""
    got = reserve(broker, now, limit=1, **kwargs)
    assert len(got) == 1, got
    return got[0]


def info(broker: Broker, job_id: str, now: float) -> JobInfo:
    """``get`` of a job that must exist."""
    job = broker.get(job_id, now=now)
    assert job is not None, job_id
    return job


def error(attempt: int, type_: str = "ValueError", message: str = "boom") -> dict[str, Any]:
    """An error record as the worker writes it."""
    return {
        "attempt": attempt,
        "type": type_,
        "message": message,
        "traceback": "Traceback (most recent call last):\n  ...\nValueError: boom\n",
        "worker": "w1",
        "at": 1700000000.5,
    }


def succeeded(d: Delivery, result: bytes | None = None, **kwargs: Any) -> Outcome:
    return Outcome(d.id, d.token, "succeeded", result=result, **kwargs)


def retried(d: Delivery, delay: float = 0.0, err: dict[str, Any] | None = None) -> Outcome:
    return Outcome(d.id, d.token, "retry", delay=delay, error=err or error(d.attempt))


def buried(d: Delivery, err: dict[str, Any] | None = None) -> Outcome:
    return Outcome(d.id, d.token, "dead", error=err or error(d.attempt))


def outcome(kind: str, d: Delivery) -> Outcome:
    """An outcome of ``kind`` for ``d`` with a default result or error."""
    if kind == "succeeded":
        return succeeded(d, result=b'"done"')
    if kind == "retry":
        return retried(d, delay=5.0)
    return buried(d)


def statuses(broker: Broker, outcomes: Sequence[Outcome], now: float) -> list[str]:
    return [s.status for s in broker.ack(outcomes, now=now)]


def counts(broker: Broker, queue: str, now: float) -> dict[str, dict[int, int]]:
    """``stats`` counts of one queue, zero entries dropped."""
    (qs,) = [s for s in broker.stats([queue], now=now) if s.queue == queue]
    return {
        state: {p: n for p, n in per.items() if n} for state, per in qs.counts.items() if any(per.values())
    }


def total(broker: Broker, queue: str, state: str, now: float) -> int:
    return sum(counts(broker, queue, now).get(state, {}).values())
