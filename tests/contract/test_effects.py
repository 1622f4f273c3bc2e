"""Effects and follow-up enqueues committed atomically with a succeeded acknowledgement."""

from __future__ import annotations

import pytest

from .helpers import enqueue, info, make_message, reserve, reserve_one, retried, statuses, succeeded

INSERT = "INSERT INTO t (x) VALUES (?)"
BROKEN = "INSERT INTO no_such_table (x) VALUES (?)"


@pytest.fixture
def table(sql):
    """A user table ``t(x)`` in the store; returns a function listing its values."""
    sql("CREATE TABLE t (x INTEGER)")
    return lambda: [x for (x,) in sql("SELECT x FROM t ORDER BY x")]


def stale(broker, now, message):
    """A delivery whose lease was reclaimed and given to another worker."""
    enqueue(broker, now, message)
    zombie = reserve_one(broker, now=now, lease=10)
    assert broker.reclaim(now=now + 11).requeued == [message.id]
    reserve_one(broker, now=now + 12)
    return zombie


def test_effects_commit_with_the_ack(broker, t0, table):
    enqueue(broker, t0, make_message())
    d = reserve_one(broker, now=t0)

    got = statuses(broker, [succeeded(d, effects=((INSERT, (1,)), (INSERT, (2,))))], now=t0 + 1)

    assert got == ["ok"]
    assert table() == [1, 2]
    assert info(broker, d.id, now=t0 + 1).state == "succeeded"


def test_effects_are_not_applied_with_a_stale_token(broker, t0, table):
    zombie = stale(broker, t0, make_message())

    assert statuses(broker, [succeeded(zombie, effects=((INSERT, (1,)),))], now=t0 + 13) == ["lost"]

    assert table() == []
    assert info(broker, zombie.id, now=t0 + 13).state == "running"


def test_a_failing_effect_commits_nothing_and_keeps_the_lease(broker, t0, table):
    enqueue(broker, t0, make_message())
    d = reserve_one(broker, now=t0, lease=30)

    (status,) = broker.ack([succeeded(d, effects=((INSERT, (1,)), (BROKEN, (2,))))], now=t0 + 1)

    assert status.status == "effects_failed"
    assert status.error
    assert table() == []  # the first effect was rolled back with the second
    job = info(broker, d.id, now=t0 + 2)
    assert job.state == "running"
    assert job.lease_until == pytest.approx(t0 + 30)
    assert job.result is None
    assert statuses(broker, [retried(d, delay=5)], now=t0 + 3) == ["ok"]
    assert info(broker, d.id, now=t0 + 3).state == "scheduled"


def test_a_failing_effect_does_not_spoil_the_other_outcomes_of_the_batch(broker, t0, table):
    enqueue(broker, t0, make_message(), make_message(), make_message())
    a, b, c = reserve(broker, now=t0, limit=3)

    got = statuses(
        broker,
        [
            succeeded(a, effects=((INSERT, (1,)),)),
            succeeded(b, effects=((BROKEN, (2,)),)),
            succeeded(c, effects=((INSERT, (3,)),)),
        ],
        now=t0 + 1,
    )

    assert got == ["ok", "effects_failed", "ok"]
    assert table() == [1, 3]
    assert [info(broker, d.id, now=t0 + 1).state for d in (a, b, c)] == ["succeeded", "running", "succeeded"]


def test_an_effect_failing_with_any_error_is_reported_per_outcome(broker, t0, table):
    enqueue(broker, t0, make_message(), make_message())
    a, b = reserve(broker, now=t0, limit=2)
    too_big = 2**70  # no SQL integer holds it: binding the parameter fails

    got = statuses(
        broker,
        [succeeded(a, effects=((INSERT, (too_big,)),)), succeeded(b, effects=((INSERT, (2,)),))],
        now=t0 + 1,
    )

    assert got == ["effects_failed", "ok"]
    assert table() == [2]
    assert info(broker, a.id, now=t0 + 1).state == "running"


# -- follow-up enqueues (every backend) ------------------------------------------------------


def test_a_follow_up_job_is_created_with_the_ack(broker, t0):
    enqueue(broker, t0, make_message())
    d = reserve_one(broker, now=t0)
    follow = make_message(task="next", queue="other", priority=0)

    assert statuses(broker, [succeeded(d, enqueues=(follow,))], now=t0 + 1) == ["ok"]

    job = info(broker, follow.id, now=t0 + 1)
    assert (job.state, job.task, job.queue) == ("ready", "next", "other")
    assert [x.id for x in reserve(broker, now=t0 + 1, queues=["other"])] == [follow.id]


def test_no_follow_up_job_with_a_stale_token(broker, t0):
    zombie = stale(broker, t0, make_message())
    follow = make_message(task="next")

    assert statuses(broker, [succeeded(zombie, enqueues=(follow,))], now=t0 + 13) == ["lost"]

    assert broker.get(follow.id, now=t0 + 13) is None
