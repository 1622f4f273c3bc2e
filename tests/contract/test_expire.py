"""expire: finished jobs are deleted once their retention has passed."""

from __future__ import annotations

from .backends import RETENTION
from .helpers import buried, enqueue, info, make_message, reserve, reserve_one, statuses, succeeded


def test_expire_deletes_finished_jobs_past_retention(broker, t0):
    done, cancelled = make_message(), make_message()
    enqueue(broker, t0, done, cancelled)
    statuses(broker, [succeeded(reserve_one(broker, now=t0))], now=t0 + 1)
    assert broker.cancel(cancelled.id, now=t0 + 2)

    assert broker.expire(now=t0 + 1 + RETENTION - 1) == 0
    assert info(broker, done.id, now=t0 + RETENTION).state == "succeeded"
    assert broker.expire(now=t0 + 1 + RETENTION + 0.5) == 1
    assert broker.get(done.id, now=t0 + RETENTION + 2) is None
    assert info(broker, cancelled.id, now=t0 + RETENTION + 2).state == "cancelled"
    assert broker.expire(now=t0 + 2 + RETENTION + 0.5) == 1
    assert broker.get(cancelled.id, now=t0 + RETENTION + 3) is None


def test_expire_respects_the_limit(broker, t0):
    enqueue(broker, t0, *[make_message() for _ in range(5)])
    statuses(broker, [succeeded(d) for d in reserve(broker, now=t0, limit=5)], now=t0)
    later = t0 + RETENTION + 1

    assert [broker.expire(now=later, limit=2) for _ in range(4)] == [2, 2, 1, 0]


def test_expire_never_deletes_pending_running_or_dead_jobs(broker, t0):
    dead = make_message()
    enqueue(broker, t0, dead)
    statuses(broker, [buried(reserve_one(broker, now=t0))], now=t0)
    running = make_message()
    enqueue(broker, t0, running)
    reserve_one(broker, now=t0, lease=10)
    ready, scheduled = make_message(), make_message(delay=10 * RETENTION)
    enqueue(broker, t0, ready, scheduled)

    assert broker.expire(now=t0 + 5 * RETENTION) == 0

    states = [info(broker, m.id, now=t0).state for m in (dead, running, ready, scheduled)]
    assert states == ["dead", "running", "ready", "scheduled"]
