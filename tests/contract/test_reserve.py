"""reserve: due times, FIFO, attempts, tokens, limits and queues."""

from __future__ import annotations

import pytest

from .helpers import (
    enqueue,
    info,
    make_message,
    reserve,
    reserve_one,
    retried,
    statuses,
)


def test_scheduled_task_is_not_reserved_before_its_due_time(broker, t0):
    m = make_message(run_at=t0 + 10)
    enqueue(broker, t0, m)

    assert reserve(broker, now=t0) == []
    assert reserve(broker, now=t0 + 9.99) == []
    assert [d.id for d in reserve(broker, now=t0 + 10)] == [m.id]


def test_delayed_task_is_reserved_once_due(broker, t0):
    m = make_message(delay=30)
    enqueue(broker, t0, m)

    assert reserve(broker, now=t0 + 29.9) == []
    d = reserve_one(broker, now=t0 + 45)
    assert d.id == m.id
    assert d.run_at == pytest.approx(t0 + 30)


def test_fifo_by_run_at_within_a_level(broker, t0):
    late = make_message(run_at=t0 - 1)
    early = make_message(run_at=t0 - 30)
    middle = make_message(run_at=t0 - 10)
    not_due = make_message(run_at=t0 + 10)
    enqueue(broker, t0, late, not_due, early, middle)

    order = [reserve_one(broker, now=t0).id for _ in range(3)]

    assert order == [early.id, middle.id, late.id]
    assert reserve(broker, now=t0) == []


def test_attempt_is_counted_at_claim(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)

    d = reserve_one(broker, now=t0, lease=30, worker="w7")

    assert d.attempt == 1
    job = info(broker, m.id, now=t0)
    assert job.state == "running"
    assert job.attempt == 1
    assert job.worker == "w7"
    assert job.lease_until == pytest.approx(t0 + 30)


def test_delivery_carries_the_message(broker, t0):
    m = make_message(task="send", queue="mail", priority=2, payload=b"[[1],{}]", key="k", max_attempts=4)
    enqueue(broker, t0 - 5, m)

    (d,) = reserve(broker, now=t0, queues=["mail"])

    assert (d.id, d.task, d.queue, d.priority, d.payload, d.key) == (
        m.id,
        "send",
        "mail",
        2,
        b"[[1],{}]",
        "k",
    )
    assert d.max_attempts == 4
    assert d.run_at == pytest.approx(t0 - 5)
    assert d.enqueued_at == pytest.approx(t0 - 5)


def test_a_leased_task_is_not_handed_out_again(broker, t0):
    enqueue(broker, t0, make_message(), make_message())

    first = reserve(broker, now=t0, limit=10)
    assert len(first) == 2
    assert reserve(broker, now=t0 + 1, limit=10) == []


def test_tokens_are_unique_per_claim(broker, t0):
    m = make_message(max_attempts=10)
    enqueue(broker, t0, m)
    tokens = []

    d = reserve_one(broker, now=t0, lease=10)
    tokens.append(d.token)
    assert broker.release([(d.id, d.token)]) == 1
    d = reserve_one(broker, now=t0 + 1, lease=10)
    tokens.append(d.token)
    assert broker.reclaim(now=t0 + 20).requeued == [m.id]
    d = reserve_one(broker, now=t0 + 21, lease=10)
    tokens.append(d.token)
    assert statuses(broker, [retried(d)], now=t0 + 22) == ["ok"]
    d = reserve_one(broker, now=t0 + 23, lease=10)
    tokens.append(d.token)

    assert len(set(tokens)) == 4


def test_limit_is_respected(broker, t0):
    ids = enqueue(broker, t0, *[make_message() for _ in range(25)])

    batches = [reserve(broker, now=t0, limit=10) for _ in range(4)]

    assert [len(b) for b in batches] == [10, 10, 5, 0]
    assert sorted(d.id for b in batches for d in b) == sorted(ids)


def test_one_reserve_serves_several_queues(broker, t0):
    a = enqueue(broker, t0, *[make_message(queue="a") for _ in range(3)])
    b = enqueue(broker, t0, *[make_message(queue="b") for _ in range(3)])

    got = reserve(broker, now=t0, queues=["a", "b"], limit=10)

    assert sorted(d.id for d in got) == sorted(a + b)
    assert {d.id: d.queue for d in got} == {i: "a" for i in a} | {i: "b" for i in b}


def test_limit_across_several_queues_takes_from_each(broker, t0):
    enqueue(broker, t0, *[make_message(queue="a") for _ in range(20)])
    enqueue(broker, t0, *[make_message(queue="b") for _ in range(20)])

    got = reserve(broker, now=t0, queues=["a", "b"], limit=10)

    assert len(got) == 10
    assert {d.queue for d in got} == {"a", "b"}


def test_queues_not_listed_are_not_touched(broker, t0):
    (other,) = enqueue(broker, t0, make_message(queue="other"))
    (mine,) = enqueue(broker, t0, make_message(queue="q"))

    got = reserve(broker, now=t0, queues=["q"], limit=10)

    assert [d.id for d in got] == [mine]
    job = info(broker, other, now=t0)
    assert (job.state, job.attempt) == ("ready", 0)
