"""The reserve script's split across priority levels is conveyor.priority.Fairness, ported to
Lua: the same takes and the same round robin state, reservation after reservation."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message


@pytest.mark.parametrize("seed", range(6))
def test_script_split_matches_fairness(open_redis, seed):
    rng = random.Random(seed)
    broker = open_redis()
    weights = tuple(rng.randint(1, 8) for _ in range(rng.randint(1, 4)))
    in_script, reference = Fairness(weights), Fairness(weights)
    due = [0] * len(weights)

    for _ in range(40):
        arrivals = [rng.choice((0, 0, 1, 3, 12)) for _ in weights]
        broker.enqueue(
            [
                Message(id=new_id(), task="t", queue="q", priority=level, payload=b"[]")
                for level, n in enumerate(arrivals)
                for _ in range(n)
            ]
        )
        due = [d + a for d, a in zip(due, arrivals, strict=True)]
        limit = rng.randint(1, 12)

        got = broker.reserve(["q"], limit, 60.0, "w1", in_script)
        expected = reference.split(due, limit)

        taken = Counter(d.priority for d in got)
        assert [taken[level] for level in range(len(weights))] == expected
        assert in_script.current == reference.current
        due = [d - t for d, t in zip(due, expected, strict=True)]
