"""cancel: only jobs that have not started."""

from __future__ import annotations

from conveyor.ids import new_id

from .helpers import buried, enqueue, info, make_message, reserve, reserve_one, statuses, succeeded, total


def test_cancel_a_ready_job(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)

    assert broker.cancel(m.id, now=t0 + 1) is True

    job = info(broker, m.id, now=t0 + 2)
    assert job.state == "cancelled"
    assert job.finished_at is not None
    assert reserve(broker, now=t0 + 2) == []
    assert total(broker, "q", "cancelled", now=t0 + 2) == 1


def test_cancel_a_scheduled_job(broker, t0):
    m = make_message(delay=60)
    enqueue(broker, t0, m)

    assert broker.cancel(m.id, now=t0 + 1) is True

    assert info(broker, m.id, now=t0 + 100).state == "cancelled"
    assert reserve(broker, now=t0 + 100) == []


def test_a_running_job_cannot_be_cancelled(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)

    assert broker.cancel(m.id, now=t0 + 1) is False

    assert info(broker, m.id, now=t0 + 1).state == "running"
    assert statuses(broker, [succeeded(d)], now=t0 + 2) == ["ok"]


def test_a_finished_job_cannot_be_cancelled(broker, t0):
    ok, bad = make_message(), make_message()
    enqueue(broker, t0, ok, bad)
    d1, d2 = reserve(broker, now=t0, limit=2)
    statuses(broker, [succeeded(d1), buried(d2)], now=t0 + 1)

    assert broker.cancel(d1.id, now=t0 + 2) is False
    assert broker.cancel(d2.id, now=t0 + 2) is False

    assert info(broker, d1.id, now=t0 + 2).state == "succeeded"
    assert info(broker, d2.id, now=t0 + 2).state == "dead"


def test_a_cancelled_job_cannot_be_cancelled_again(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    assert broker.cancel(m.id, now=t0) is True

    assert broker.cancel(m.id, now=t0 + 1) is False


def test_cancel_of_an_unknown_job(broker, t0):
    assert broker.cancel(new_id(), now=t0) is False
