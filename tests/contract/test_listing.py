"""Reads for operators: listing jobs by state, and the registry of live workers."""

from __future__ import annotations

from conveyor.brokers import Broker
from conveyor.records import Outcome, WorkerInfo

from .helpers import enqueue, make_message, reserve


def test_jobs_lists_by_state_queue_and_task_in_a_useful_order(broker: Broker, t0: float) -> None:
    later, sooner = enqueue(broker, t0, make_message(task="a", delay=20), make_message(task="b", delay=10))
    first, second, third = enqueue(broker, t0 + 1, *(make_message(task="c") for _ in range(3)))
    other = enqueue(broker, t0 + 1, make_message(queue="other"))[0]
    (running,) = reserve(broker, t0 + 2, limit=1)
    assert running.id == first
    broker.ack([Outcome(running.id, running.token, "succeeded")], now=t0 + 3)
    (running2,) = reserve(broker, t0 + 4, limit=1)
    now = t0 + 5

    def ids(**filters: object) -> list[str]:
        return [j.id for j in broker.jobs(now=now, **filters)]  # type: ignore[arg-type]

    assert ids(state="scheduled") == [sooner, later]
    assert ids(state="ready", queue="q") == [third]
    assert running2.id == second
    assert ids(state="running") == [second]
    assert ids(state="succeeded") == [first]
    assert ids(state="ready") == [third, other]  # same due time: enqueue order
    assert ids(task="a") == [later]
    assert ids(queue="other") == [other]
    assert ids(state="dead") == []
    assert len(ids()) == 6
    assert ids(state="scheduled", limit=1, offset=1) == [later]
    assert all(j.state == "scheduled" for j in broker.jobs(state="scheduled", now=now))


def _worker(worker_id: str, beat: float, in_flight: int = 0) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        host="h",
        pid=1,
        queues=["q"],
        concurrency=4,
        in_flight=in_flight,
        started_at=beat - 10,
        last_beat=beat,
        counts={"succeeded": 5},
    )


def test_workers_are_listed_while_their_heartbeat_is_fresh(broker: Broker, t0: float) -> None:
    broker.beat(_worker("w1", t0), ttl=10, now=t0)
    broker.beat(_worker("w2", t0), ttl=10, now=t0)
    broker.beat(_worker("w1", t0 + 5, in_flight=3), ttl=10, now=t0 + 5)  # a newer beat replaces the older
    live = broker.workers(now=t0 + 6)
    assert [w.id for w in live] == ["w1", "w2"]
    assert live[0].in_flight == 3 and live[0].counts == {"succeeded": 5}
    assert [w.id for w in broker.workers(now=t0 + 12)] == ["w1"]  # w2's beat is 12 s old
    broker.beat(_worker("w1", t0 + 13), ttl=-1, now=t0 + 13)  # a stopping worker leaves at once
    assert broker.workers(now=t0 + 13) == []
