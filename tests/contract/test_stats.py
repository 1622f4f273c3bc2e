"""stats: counts per queue, state and priority; the age of the oldest ready task."""

from __future__ import annotations

import pytest

from .helpers import (
    HIGH,
    LOW,
    NORMAL,
    buried,
    counts,
    enqueue,
    make_message,
    reserve,
    reserve_one,
    statuses,
    succeeded,
)


def put_one_in_each_state(broker, now, queue: str) -> None:
    """q: running normal, succeeded high, dead low, cancelled normal, ready 2 high + 1 normal,
    scheduled low."""
    enqueue(broker, now, make_message(queue=queue, priority=NORMAL))
    reserve_one(broker, now=now, queues=[queue])
    enqueue(broker, now, make_message(queue=queue, priority=HIGH))
    statuses(broker, [succeeded(reserve_one(broker, now=now, queues=[queue]))], now=now)
    enqueue(broker, now, make_message(queue=queue, priority=LOW))
    statuses(broker, [buried(reserve_one(broker, now=now, queues=[queue]))], now=now)
    (cancelled,) = enqueue(broker, now, make_message(queue=queue, priority=NORMAL))
    assert broker.cancel(cancelled, now=now)
    enqueue(
        broker,
        now,
        make_message(queue=queue, priority=HIGH),
        make_message(queue=queue, priority=HIGH),
        make_message(queue=queue, priority=NORMAL),
        make_message(queue=queue, priority=LOW, delay=60),
    )


EXPECTED = {
    "ready": {HIGH: 2, NORMAL: 1},
    "scheduled": {LOW: 1},
    "running": {NORMAL: 1},
    "succeeded": {HIGH: 1},
    "dead": {LOW: 1},
    "cancelled": {NORMAL: 1},
}


def test_counts_per_state_and_priority(broker, t0):
    put_one_in_each_state(broker, t0, "q")

    assert counts(broker, "q", now=t0) == EXPECTED


def test_scheduled_counts_as_ready_once_due(broker, t0):
    put_one_in_each_state(broker, t0, "q")

    later = counts(broker, "q", now=t0 + 61)

    assert later["ready"] == {HIGH: 2, NORMAL: 1, LOW: 1}
    assert "scheduled" not in later


def test_stats_of_given_queues_and_of_all_queues(broker, t0):
    put_one_in_each_state(broker, t0, "q")
    enqueue(broker, t0, make_message(queue="other"), make_message(queue="other", delay=60))
    enqueue(broker, t0, make_message(queue="third"))

    some = {s.queue: s for s in broker.stats(["q", "other"], now=t0)}
    every = {s.queue: s for s in broker.stats(None, now=t0)}

    assert set(some) == {"q", "other"}
    assert set(every) == {"q", "other", "third"}
    assert some["other"].total("ready") == 1
    assert some["other"].total("scheduled") == 1
    assert every["third"].total("ready") == 1
    assert every["q"].total("ready") == 3
    assert every["q"].total("dead") == 1


def test_stats_of_an_empty_queue(broker, t0):
    enqueue(broker, t0, make_message(queue="busy"))

    got = broker.stats(["idle"], now=t0)

    assert all(s.queue == "idle" for s in got)
    assert sum(s.total(state) for s in got for state in EXPECTED) == 0
    assert all(s.oldest_ready_age is None for s in got)


def test_oldest_ready_age(broker, t0):
    enqueue(broker, t0 - 30, make_message(priority=LOW))
    enqueue(broker, t0 - 10, make_message(priority=HIGH))
    enqueue(broker, t0 - 100, make_message(delay=3600))  # scheduled: not ready, no age

    (qs,) = broker.stats(["q"], now=t0)

    assert qs.oldest_ready_age == pytest.approx(30, abs=0.01)


def test_no_oldest_ready_age_without_ready_tasks(broker, t0):
    enqueue(broker, t0 - 30, make_message())
    reserve(broker, now=t0)
    enqueue(broker, t0, make_message(delay=60))

    (qs,) = broker.stats(["q"], now=t0)

    assert qs.oldest_ready_age is None
