"""Leases: extend (heartbeat), release and reclaim."""

from __future__ import annotations

import threading

import pytest

from conveyor.records import Reclaimed

from .helpers import enqueue, info, make_message, reserve, reserve_one, retried, statuses, succeeded

# -- extend ----------------------------------------------------------------------------------


def test_extend_pushes_the_lease(broker, t0):
    enqueue(broker, t0, make_message())
    d = reserve_one(broker, now=t0, lease=10)

    assert broker.extend([(d.id, d.token)], lease=30, now=t0 + 5) == []

    assert info(broker, d.id, now=t0 + 5).lease_until == pytest.approx(t0 + 35)


def test_a_heartbeat_prevents_reclaim(broker, t0):
    enqueue(broker, t0, make_message())
    d = reserve_one(broker, now=t0, lease=10)
    for beat in (8, 16, 24):
        assert broker.extend([(d.id, d.token)], lease=10, now=t0 + beat) == []

    assert broker.reclaim(now=t0 + 30) == Reclaimed([], [])

    assert info(broker, d.id, now=t0 + 30).state == "running"
    assert statuses(broker, [succeeded(d)], now=t0 + 31) == ["ok"]


def test_extend_reports_lost_leases(broker, t0):
    taken, finished, valid, never = (make_message() for _ in range(4))
    enqueue(broker, t0, taken, finished, valid)
    got = {d.id: d for d in reserve(broker, now=t0, limit=3, lease=10)}
    assert statuses(broker, [succeeded(got[finished.id])], now=t0 + 1) == ["ok"]
    assert broker.extend([(got[valid.id].id, got[valid.id].token)], lease=60, now=t0 + 5) == []
    assert broker.reclaim(now=t0 + 11).requeued == [taken.id]
    owner = reserve_one(broker, now=t0 + 12, lease=60)
    enqueue(broker, t0 + 12, never)

    leases = [
        (taken.id, got[taken.id].token),
        (finished.id, got[finished.id].token),
        (valid.id, got[valid.id].token),
        (never.id, 1),
    ]
    lost = broker.extend(leases, lease=100, now=t0 + 13)

    assert sorted(lost) == sorted([taken.id, finished.id, never.id])
    assert info(broker, valid.id, now=t0 + 13).lease_until == pytest.approx(t0 + 113)
    # The stale heartbeat did not touch the new owner's lease.
    assert info(broker, taken.id, now=t0 + 13).lease_until == pytest.approx(t0 + 72)
    assert owner.id == taken.id


# -- release ---------------------------------------------------------------------------------


def test_release_returns_the_task_without_counting_the_attempt(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)

    assert broker.release([(d.id, d.token)]) == 1

    assert info(broker, m.id, now=t0 + 1).state == "ready"
    again = reserve_one(broker, now=t0 + 1)
    assert again.attempt == 1
    assert again.token != d.token


def test_release_after_a_retry_keeps_the_attempt_count(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    statuses(broker, [retried(reserve_one(broker, now=t0), delay=0)], now=t0)
    second = reserve_one(broker, now=t0 + 1)
    assert second.attempt == 2

    assert broker.release([(second.id, second.token)]) == 1

    assert reserve_one(broker, now=t0 + 2).attempt == 2


def test_release_counts_the_tasks_returned(broker, t0):
    enqueue(broker, t0, *[make_message() for _ in range(4)])
    ds = reserve(broker, now=t0, limit=4)

    assert broker.release([(d.id, d.token) for d in ds[:3]]) == 3

    assert len(reserve(broker, now=t0 + 1, limit=10)) == 3


def test_release_with_a_stale_token_does_nothing(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    zombie = reserve_one(broker, now=t0, lease=10)
    broker.reclaim(now=t0 + 11)
    owner = reserve_one(broker, now=t0 + 12, lease=60)

    assert broker.release([(zombie.id, zombie.token)]) == 0

    job = info(broker, m.id, now=t0 + 13)
    assert (job.state, job.attempt) == ("running", 2)
    assert reserve(broker, now=t0 + 13) == []
    assert statuses(broker, [succeeded(owner)], now=t0 + 14) == ["ok"]


# -- reclaim ---------------------------------------------------------------------------------


def test_reclaim_makes_an_expired_lease_ready_with_a_worker_lost_error(broker, t0):
    m = make_message(max_attempts=3)
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0, lease=10, worker="w1")

    assert broker.reclaim(now=t0 + 11) == Reclaimed([m.id], [])

    job = info(broker, m.id, now=t0 + 11)
    assert job.state == "ready"
    assert len(job.errors) == 1
    assert job.errors[0]["type"] == "WorkerLost"
    assert job.errors[0]["attempt"] == 1
    again = reserve_one(broker, now=t0 + 12)
    assert again.attempt == 2
    assert again.token != d.token


def test_reclaim_buries_a_task_whose_attempts_are_spent(broker, t0):
    m = make_message(max_attempts=2)
    enqueue(broker, t0, m)
    reserve_one(broker, now=t0, lease=10)
    assert broker.reclaim(now=t0 + 11) == Reclaimed([m.id], [])
    assert reserve_one(broker, now=t0 + 12, lease=10).attempt == 2

    assert broker.reclaim(now=t0 + 23) == Reclaimed([], [m.id])

    job = info(broker, m.id, now=t0 + 24)
    assert job.state == "dead"
    assert [e["type"] for e in job.errors] == ["WorkerLost", "WorkerLost"]
    assert [e["attempt"] for e in job.errors] == [1, 2]
    assert [j.id for j in broker.dead()] == [m.id]
    assert reserve(broker, now=t0 + 24) == []


def test_reclaim_leaves_unexpired_leases_alone(broker, t0):
    short, long_ = make_message(), make_message()
    enqueue(broker, t0, short)
    s = reserve_one(broker, now=t0, lease=10)
    enqueue(broker, t0, long_)
    lo = reserve_one(broker, now=t0, lease=60)

    assert broker.reclaim(now=t0 + 30) == Reclaimed([short.id], [])

    job = info(broker, long_.id, now=t0 + 30)
    assert (job.state, job.errors) == ("running", [])
    assert statuses(broker, [succeeded(lo), succeeded(s)], now=t0 + 31) == ["ok", "lost"]


def test_reclaim_with_nothing_expired_changes_nothing(broker, t0):
    enqueue(broker, t0, make_message(), make_message())
    reserve_one(broker, now=t0, lease=10)

    assert broker.reclaim(now=t0 + 5) == Reclaimed([], [])
    assert broker.reclaim(now=t0 + 5) == Reclaimed([], [])


# -- a connection of a thread's own (heartbeats) ----------------------------------------------


def test_a_thread_with_its_own_connection_extends_and_settles_like_any_other(broker, t0):
    enqueue(broker, t0, make_message(), make_message())
    first, second = reserve(broker, now=t0, limit=2, lease=10)
    answers: list[object] = []

    def heartbeat() -> None:
        broker.own_connection()
        answers.append(broker.extend([(first.id, first.token), (second.id, 999)], lease=30, now=t0 + 5))
        answers.append(statuses(broker, [succeeded(first)], now=t0 + 6))
        answers.append(broker.extend([(first.id, first.token)], lease=30, now=t0 + 7))

    thread = threading.Thread(target=heartbeat)
    thread.start()
    thread.join(30)
    assert answers == [[second.id], ["ok"], [first.id]]
    assert info(broker, second.id, now=t0 + 8).lease_until == pytest.approx(t0 + 10)
