"""enqueue(..., max_queued=): a capped queue refuses a batch that would take it past its cap of
pending (ready and scheduled) jobs, whole, atomically with the insert, on every store."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from conveyor.brokers import Broker
from conveyor.errors import QueueFull

from .helpers import enqueue, make_message, reserve, reserve_one, statuses, succeeded, total

# Three queues of one hash slot (15495): a Redis Cluster stores a batch all or nothing only
# within one slot (see test_keys).
A, B, C = "a", "a43601", "a46173"


def pending(broker: Broker, queue: str, now: float) -> int:
    return total(broker, queue, "ready", now) + total(broker, queue, "scheduled", now)


def test_a_batch_past_the_cap_is_refused_whole(broker, t0):
    caps = {A: 3}
    first = broker.enqueue([make_message(queue=A), make_message(queue=A)], now=t0, max_queued=caps)
    assert [e.created for e in first] == [True, True]
    refused = [make_message(queue=A), make_message(queue=A)]

    with pytest.raises(QueueFull) as caught:
        broker.enqueue(refused, now=t0, max_queued=caps)

    assert (caught.value.queue, caught.value.queued, caught.value.cap, caught.value.adding) == (A, 2, 3, 2)
    assert "'a' is full" in str(caught.value) and "max_queued 3" in str(caught.value)
    assert pending(broker, A, t0) == 2
    assert all(broker.get(m.id, now=t0) is None for m in refused)
    # Up to the cap exactly, then no further.
    assert broker.enqueue([make_message(queue=A)], now=t0, max_queued=caps)[0].created
    with pytest.raises(QueueFull):
        broker.enqueue([make_message(queue=A)], now=t0, max_queued=caps)
    assert pending(broker, A, t0) == 3


def test_scheduled_jobs_count_and_running_finished_and_dead_ones_do_not(broker, t0):
    caps = {A: 2}
    enqueue(broker, t0, make_message(queue=A), make_message(queue=A, delay=3600))
    with pytest.raises(QueueFull):
        broker.enqueue([make_message(queue=A)], now=t0, max_queued=caps)

    d = reserve_one(broker, t0, queues=(A,))  # running: no longer pending
    assert broker.enqueue([make_message(queue=A)], now=t0, max_queued=caps)[0].created
    assert statuses(broker, [succeeded(d)], t0) == ["ok"]
    with pytest.raises(QueueFull):
        broker.enqueue([make_message(queue=A)], now=t0, max_queued=caps)
    assert pending(broker, A, t0) == 2


def test_a_batch_spanning_queues_is_refused_whole_when_one_is_full(broker, t0):
    caps = {A: 1, C: 10}
    enqueue(broker, t0, make_message(queue=A))
    batch = [make_message(queue=B), make_message(queue=C), make_message(queue=A), make_message(queue=B)]

    with pytest.raises(QueueFull) as caught:
        broker.enqueue(batch, now=t0, max_queued=caps)

    assert caught.value.queue == A
    assert [pending(broker, q, t0) for q in (A, B, C)] == [1, 0, 0]
    # Without the full queue, the same queues take it.
    assert all(e.created for e in broker.enqueue([batch[0], batch[1], batch[3]], now=t0, max_queued=caps))
    assert [pending(broker, q, t0) for q in (A, B, C)] == [1, 2, 1]


def test_queues_without_a_cap_are_never_refused(broker, t0):
    caps = {A: 0}  # 0 refuses every new job of A
    with pytest.raises(QueueFull) as caught:
        broker.enqueue([make_message(queue=A)], now=t0, max_queued=caps)
    assert (caught.value.queued, caught.value.cap) == (0, 0)

    created = broker.enqueue([make_message(queue=B) for _ in range(50)], now=t0, max_queued=caps)
    assert all(e.created for e in created)
    assert enqueue(broker, t0, *(make_message(queue=A) for _ in range(5)))  # no max_queued: no cap
    assert pending(broker, A, t0) == 5


def test_a_key_resolved_to_an_existing_job_adds_nothing(broker, t0):
    caps = {A: 1}
    first = broker.enqueue([make_message(queue=A, key="k")], now=t0, max_queued=caps)

    again = broker.enqueue([make_message(queue=A, key="k")], now=t0, max_queued=caps)

    assert [e.created for e in again] == [False] and again[0].id == first[0].id
    with pytest.raises(QueueFull):
        broker.enqueue([make_message(queue=A, key="k"), make_message(queue=A)], now=t0, max_queued=caps)
    assert pending(broker, A, t0) == 1


def test_a_queue_past_its_cap_refuses_until_drained_below_it(broker, t0):
    caps = {A: 2}
    enqueue(broker, t0, *(make_message(queue=A) for _ in range(5)))  # stored before the cap
    with pytest.raises(QueueFull) as caught:
        broker.enqueue([make_message(queue=A)], now=t0, max_queued=caps)
    assert caught.value.queued >= 3  # counted at least one past the cap

    for d in reserve(broker, t0, queues=(A,), limit=4):
        assert statuses(broker, [succeeded(d)], t0) == ["ok"]

    assert broker.enqueue([make_message(queue=A)], now=t0, max_queued=caps)[0].created
    assert pending(broker, A, t0) == 2


def test_racing_producers_never_take_a_queue_past_its_cap(open_handle: Callable[[], Broker], t0):
    """Producers race one message at a time for the last places: every refusal finds the
    queue full and the queue ends exactly at its cap (PostgreSQL: the per-queue lock)."""
    cap, producers, tries = 40, 4, 20
    handles = [open_handle() for _ in range(producers)]
    accepted = [0] * producers
    start = threading.Barrier(producers)
    failures: list[BaseException] = []

    def produce(p: int) -> None:
        try:
            start.wait(timeout=30)
            for _ in range(tries):
                try:
                    handles[p].enqueue([make_message(queue=A)], now=t0, max_queued={A: cap})
                    accepted[p] += 1
                except QueueFull as exc:
                    assert exc.queued >= cap
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert failures == []
    assert sum(accepted) == cap
    assert pending(handles[0], A, t0) == cap


def test_a_refusal_in_the_callers_transaction_undoes_only_its_batch(broker, t0, transaction):
    caps = {A: 2}
    kept = make_message(queue=A)
    refused = [make_message(queue=A), make_message(queue=A)]

    with transaction() as conn:
        assert broker.enqueue([kept], now=t0, connection=conn, max_queued=caps)[0].created
        with pytest.raises(QueueFull) as caught:
            broker.enqueue(refused, now=t0, connection=conn, max_queued=caps)
        assert caught.value.queued == 1  # the caller's own uncommitted job counts

    assert broker.get(kept.id, now=t0) is not None
    assert all(broker.get(m.id, now=t0) is None for m in refused)
    assert pending(broker, A, t0) == 1
