"""PostgreSQL: pauses hold for the jobs with limits too, and resume brings them back
(docs/flow-control.md): reserve_unpaused parks a paused task's due jobs at the heads of the
groups a claim looks at, and resume puts them back into their groups."""

from __future__ import annotations

from conveyor.brokers.postgres import PostgresBroker
from conveyor.priority import Fairness
from conveyor.records import Message, Rule

SHARED = (Rule("k", 1000.0, 100, 0),)
SOLO = (Rule("solo", 1000.0, 100, 0),)


def message(name: str, task: str, limits: tuple[Rule, ...]) -> Message:
    return Message(id=name, task=task, queue="q", priority=1, payload=b"[]", limits=limits)


def drain(broker: PostgresBroker, fairness: Fairness, limit: int) -> list[str]:
    taken: list[str] = []
    while got := broker.reserve(["q"], limit, 30.0, "w", fairness, now=200.0):
        taken += [d.id for d in got]
    return sorted(taken)


def test_a_paused_tasks_grouped_jobs_are_not_claimed_and_come_back_on_resume(store_url: str) -> None:
    broker = PostgresBroker(store_url)
    fairness = Fairness((6, 3, 1))
    try:
        broker.enqueue([message(f"plain-{n}", "plain", ()) for n in range(3)], now=100.0)  # due first
        broker.enqueue([message(f"solo-{n}", "a", SOLO) for n in range(2)], now=101.0)  # only task a
        broker.enqueue([message(f"a-{n}", "a", SHARED) for n in range(3)], now=102.0)  # k's heads
        broker.enqueue([message(f"b-{n}", "b", SHARED) for n in range(2)], now=103.0)
        broker.pause("q", task="a")

        assert drain(broker, fairness, 1) == ["b-0", "b-1", "plain-0", "plain-1", "plain-2"]
        (stats,) = broker.stats(["q"], now=200.0)
        assert stats.total("ready") == 5  # the paused task's jobs wait, listed as pending

        broker.resume("q", task="a")
        assert drain(broker, fairness, 10) == ["a-0", "a-1", "a-2", "solo-0", "solo-1"]
    finally:
        broker.close()


def test_a_paused_queue_lets_no_grouped_job_be_claimed(store_url: str) -> None:
    broker = PostgresBroker(store_url)
    fairness = Fairness((6, 3, 1))
    try:
        broker.enqueue([message(f"a-{n}", "a", SHARED) for n in range(2)], now=100.0)
        broker.pause("q")
        assert drain(broker, fairness, 5) == []
        broker.resume("q")
        assert drain(broker, fairness, 5) == ["a-0", "a-1"]
    finally:
        broker.close()
