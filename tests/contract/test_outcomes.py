"""ack: succeeded, retry and dead outcomes, and fencing by token."""

from __future__ import annotations

import msgspec
import pytest

from conveyor.records import AckStatus

from .helpers import (
    buried,
    enqueue,
    error,
    info,
    make_message,
    outcome,
    reserve,
    reserve_one,
    retried,
    statuses,
    succeeded,
)


def test_succeeded_stores_the_result(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)

    assert broker.ack([succeeded(d, result=b'{"total": 42}')], now=t0 + 1) == [AckStatus("ok")]

    job = info(broker, m.id, now=t0 + 2)
    assert job.state == "succeeded"
    assert job.result == b'{"total": 42}'
    assert type(job.result) is bytes
    assert job.attempt == 1
    assert job.finished_at == pytest.approx(t0 + 1)
    assert reserve(broker, now=t0 + 2) == []


def test_retry_reschedules_with_the_error_recorded(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)
    err = error(1, "ConnectionError", "refused")

    assert statuses(broker, [retried(d, delay=30, err=err)], now=t0 + 1) == ["ok"]

    job = info(broker, m.id, now=t0 + 2)
    assert job.state == "scheduled"
    assert job.run_at == pytest.approx(t0 + 31)
    assert job.attempt == 1
    assert job.errors == [err]
    assert info(broker, m.id, now=t0 + 31).state == "ready"


def test_a_retried_task_runs_again_at_its_due_time_with_the_next_attempt(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    first = reserve_one(broker, now=t0)
    e1 = error(1, message="first")
    statuses(broker, [retried(first, delay=30, err=e1)], now=t0 + 1)

    assert reserve(broker, now=t0 + 30) == []
    second = reserve_one(broker, now=t0 + 31)
    assert second.attempt == 2
    assert second.token != first.token

    e2 = error(2, message="second")
    assert statuses(broker, [retried(second, delay=5, err=e2)], now=t0 + 32) == ["ok"]
    assert info(broker, m.id, now=t0 + 33).errors == [e1, e2]


def test_dead_moves_to_the_dead_letter_queue_with_every_error(broker, t0):
    m = make_message(max_attempts=3, payload=b"[[7],{}]")
    enqueue(broker, t0, m)
    errors = [error(n, message=f"attempt {n}") for n in (1, 2, 3)]
    for n in (1, 2):
        d = reserve_one(broker, now=t0 + 10 * n)
        assert d.attempt == n
        assert statuses(broker, [retried(d, delay=1, err=errors[n - 1])], now=t0 + 10 * n) == ["ok"]
    d = reserve_one(broker, now=t0 + 30)

    assert statuses(broker, [buried(d, err=errors[2])], now=t0 + 31) == ["ok"]

    job = info(broker, m.id, now=t0 + 40)
    assert job.state == "dead"
    assert job.errors == errors
    assert job.payload == b"[[7],{}]"
    assert [j.id for j in broker.dead()] == [m.id]
    assert reserve(broker, now=t0 + 40) == []


def test_one_status_per_outcome_in_order(broker, t0):
    enqueue(broker, t0, *[make_message() for _ in range(3)])
    a, b, c = reserve(broker, now=t0, limit=3)
    stale_b = msgspec.structs.replace(b, token=b.token + 100)

    got = statuses(broker, [succeeded(a), succeeded(stale_b), retried(c, delay=1)], now=t0 + 1)

    assert got == ["ok", "lost", "ok"]
    assert info(broker, b.id, now=t0 + 1).state == "running"


def test_a_batch_of_successes_settles_each_job_with_its_own_result(broker, t0):
    enqueue(broker, t0, *[make_message() for _ in range(6)])
    jobs = reserve(broker, now=t0, limit=6)
    done_before = jobs[5]
    assert statuses(broker, [succeeded(done_before, result=b"early")], now=t0 + 1) == ["ok"]
    batch = [
        succeeded(d, result=str(n).encode())
        if n % 2 == 0
        else succeeded(msgspec.structs.replace(d, token=d.token + 1), result=b"stale")
        for n, d in enumerate(jobs[:5])
    ]

    got = statuses(broker, [*batch, succeeded(done_before, result=b"late")], now=t0 + 2)

    assert got == ["ok", "lost", "ok", "lost", "ok", "lost"]
    after = [info(broker, d.id, now=t0 + 3) for d in jobs]
    assert [(j.state, j.result) for j in after] == [
        ("succeeded", b"0"),
        ("running", None),
        ("succeeded", b"2"),
        ("running", None),
        ("succeeded", b"4"),
        ("succeeded", b"early"),
    ]


@pytest.mark.parametrize("kind", ["succeeded", "retry", "dead"])
def test_a_stale_token_is_refused_and_changes_nothing(broker, t0, kind):
    m = make_message(max_attempts=3)
    enqueue(broker, t0, m)
    zombie = reserve_one(broker, now=t0, lease=10, worker="zombie")
    assert broker.reclaim(now=t0 + 11).requeued == [m.id]
    owner = reserve_one(broker, now=t0 + 12, lease=60, worker="owner")
    before = info(broker, m.id, now=t0 + 13)

    assert broker.ack([outcome(kind, zombie)], now=t0 + 13) == [AckStatus("lost")]

    after = info(broker, m.id, now=t0 + 14)
    assert after.state == "running"
    assert (after.attempt, after.errors, after.result) == (before.attempt, before.errors, None)
    assert after.lease_until == pytest.approx(t0 + 72)
    assert after.worker == "owner"
    assert statuses(broker, [outcome(kind, owner)], now=t0 + 15) == ["ok"]


@pytest.mark.parametrize("kind", ["succeeded", "retry", "dead"])
def test_ack_of_a_job_that_is_not_running_is_lost(broker, t0, kind):
    m = make_message()
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)
    assert statuses(broker, [succeeded(d, result=b"1")], now=t0 + 1) == ["ok"]

    assert statuses(broker, [outcome(kind, d)], now=t0 + 2) == ["lost"]

    job = info(broker, m.id, now=t0 + 3)
    assert (job.state, job.result, job.errors) == ("succeeded", b"1", [])


def test_ack_of_a_ready_job_is_lost(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)
    assert broker.release([(d.id, d.token)]) == 1

    assert statuses(broker, [succeeded(d)], now=t0 + 1) == ["lost"]
    assert info(broker, m.id, now=t0 + 1).state == "ready"
