"""The split of a reservation across priority levels (weights 6:3:1, level 0 most urgent)."""

from __future__ import annotations

from collections import Counter

from conveyor.priority import Fairness

from .helpers import HIGH, LOW, NORMAL, WEIGHTS, enqueue, make_message, reserve, reserve_one


def fill(broker, now, per_level: dict[int, int], queue: str = "q") -> None:
    for level, n in per_level.items():
        enqueue(broker, now, *[make_message(queue=queue, priority=level) for _ in range(n)])


def levels(deliveries) -> dict[int, int]:
    return dict(Counter(d.priority for d in deliveries))


def test_reservation_is_split_by_weights(broker, t0):
    fill(broker, t0, {HIGH: 100, NORMAL: 100, LOW: 100})

    got = reserve(broker, now=t0, limit=10, fairness=Fairness(WEIGHTS))

    assert levels(got) == {HIGH: 6, NORMAL: 3, LOW: 1}


def test_an_empty_levels_share_goes_to_the_others(broker, t0):
    fill(broker, t0, {NORMAL: 100, LOW: 100})

    got = reserve(broker, now=t0, limit=10, fairness=Fairness(WEIGHTS))

    split = levels(got)
    assert len(got) == 10
    assert split[NORMAL] > split[LOW] >= 1


def test_a_short_levels_share_goes_to_the_others(broker, t0):
    fill(broker, t0, {HIGH: 2, NORMAL: 100, LOW: 100})

    got = reserve(broker, now=t0, limit=10, fairness=Fairness(WEIGHTS))

    assert len(got) == 10
    assert levels(got)[HIGH] == 2


def test_a_single_level_gets_the_whole_reservation(broker, t0):
    fill(broker, t0, {LOW: 50})

    assert levels(reserve(broker, now=t0, limit=10, fairness=Fairness(WEIGHTS))) == {LOW: 10}


def test_scheduled_tasks_do_not_count_as_ready_for_the_split(broker, t0):
    enqueue(broker, t0, *[make_message(priority=HIGH, delay=60) for _ in range(100)])
    fill(broker, t0, {LOW: 100})

    got = reserve(broker, now=t0, limit=10, fairness=Fairness(WEIGHTS))

    assert levels(got) == {LOW: 10}


def test_a_high_task_does_not_wait_behind_a_low_backlog(broker, t0):
    fill(broker, t0 - 10, {LOW: 10_000})
    fairness = Fairness(WEIGHTS)
    for _ in range(5):  # a worker busy draining the backlog one task at a time
        assert reserve_one(broker, now=t0, fairness=fairness).priority == LOW
    urgent = make_message(priority=HIGH)
    enqueue(broker, t0, urgent)

    d = reserve_one(broker, now=t0, fairness=fairness)

    assert d.id == urgent.id


def test_low_still_progresses_while_high_is_saturated(broker, t0):
    fill(broker, t0, {HIGH: 200, LOW: 200})
    fairness = Fairness(WEIGHTS)

    order = [reserve_one(broker, now=t0, fairness=fairness).priority for _ in range(70)]

    # Weights 6 and 1 present: low gets about 1/7 of the slots, in every stretch of the run.
    assert 9 <= order.count(LOW) <= 11
    assert all(LOW in order[i : i + 14] for i in range(len(order) - 13))
