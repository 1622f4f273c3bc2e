"""reserve from several saturated queues: each gets its share, one slot or 32 at a time."""

from __future__ import annotations

from collections import Counter

import pytest

from conveyor.brokers import Broker
from conveyor.priority import Fairness

from .helpers import HIGH, LOW, WEIGHTS, enqueue, make_message, reserve


def _saturate(broker: Broker, t0: float, per_queue: int, *queues: str, priority: int = 1) -> None:
    for q in queues:
        for start in range(0, per_queue, 500):
            n = min(500, per_queue - start)
            enqueue(broker, t0, *[make_message(queue=q, priority=priority) for _ in range(n)])


def _starts(
    broker: Broker, t0: float, queues: list[str], limit: int, rounds: int, fairness: Fairness
) -> Counter[str]:
    got: Counter[str] = Counter()
    for _ in range(rounds):
        batch = reserve(broker, now=t0, queues=queues, limit=limit, fairness=fairness)
        assert len(batch) == limit  # every queue stays saturated through the rounds
        got.update(d.queue for d in batch)
    return got


@pytest.mark.parametrize(("limit", "rounds"), [(1, 120), (32, 15)])
def test_equal_queues_share_the_slots(broker, t0, limit, rounds):
    _saturate(broker, t0, 400, "a", "b", "c")

    got = _starts(broker, t0, ["a", "b", "c"], limit, rounds, Fairness(WEIGHTS))

    # Each queue's share of the starts is a third, within one slot per queue.
    third = limit * rounds / 3
    assert all(abs(got[q] - third) <= 1 for q in "abc"), got


@pytest.mark.parametrize(("limit", "rounds"), [(1, 200), (32, 20)])
def test_weights_split_the_slots_in_proportion(broker, t0, limit, rounds):
    _saturate(broker, t0, 700, "a", "b")

    got = _starts(broker, t0, ["a", "b"], limit, rounds, Fairness(WEIGHTS, queues={"a": 3, "b": 1}))

    # 3:1, within one slot of 75 % / 25 %.
    assert abs(got["a"] - 0.75 * limit * rounds) <= 1, got
    assert got["a"] + got["b"] == limit * rounds


@pytest.mark.parametrize("limit", [1, 32])
def test_strict_order_serves_the_first_listed_while_it_has_jobs(broker, t0, limit):
    _saturate(broker, t0, 40, "a", "b")
    strict = Fairness(WEIGHTS, strict=True)

    first = reserve(broker, now=t0, queues=["a", "b"], limit=limit, fairness=strict)
    rest = [
        d for _ in range(80 // limit + 1) for d in reserve(broker, t0, ["a", "b"], limit, fairness=strict)
    ]

    order = [d.queue for d in first + rest]
    assert order == ["a"] * 40 + ["b"] * 40


def test_one_queue_alone_takes_every_slot(broker, t0):
    _saturate(broker, t0, 50, "a")

    got = _starts(broker, t0, ["a", "b"], 1, 50, Fairness(WEIGHTS, queues={"a": 1, "b": 5}))

    assert got == Counter({"a": 50})


def test_queue_fairness_applies_within_a_level_share(broker, t0):
    """Levels keep their weights across queues: a high job in ``b`` is not held behind a low
    backlog in ``a``, and each level's share is itself split between the queues."""
    _saturate(broker, t0, 100, "a", "b", priority=LOW)
    _saturate(broker, t0, 100, "a", "b", priority=HIGH)
    fairness = Fairness(WEIGHTS)

    got = Counter(
        (d.queue, d.priority)
        for _ in range(70)
        for d in reserve(broker, t0, ["a", "b"], 1, fairness=fairness)
    )

    # 6:1 between high and low (60 and 10), each split evenly between the queues.
    assert got == Counter({("a", HIGH): 30, ("b", HIGH): 30, ("a", LOW): 5, ("b", LOW): 5})
