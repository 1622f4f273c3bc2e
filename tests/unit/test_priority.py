"""Priority levels (names, indices) and the smooth weighted round robin split across them."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from conveyor.errors import ConfigurationError
from conveyor.priority import DEFAULT_LEVELS, Fairness, Priorities

HIGH, NORMAL, LOW = 0, 1, 2
PLENTY = 1_000_000


# --- Priorities -----------------------------------------------------------------------------------


def test_default_levels() -> None:
    p = Priorities()
    assert p.names == ("high", "normal", "low")
    assert p.weights == (6, 3, 1)
    assert len(p) == 3
    assert dict(DEFAULT_LEVELS) == {"high": 6, "normal": 3, "low": 1}


@pytest.mark.parametrize(("name", "index"), [("high", 0), ("normal", 1), ("low", 2)])
def test_resolve_names(name: str, index: int) -> None:
    assert Priorities().resolve(name) == index


@pytest.mark.parametrize("index", [0, 1, 2])
def test_resolve_indices(index: int) -> None:
    assert Priorities().resolve(index) == index


def test_resolve_custom_levels() -> None:
    p = Priorities({"urgent": 10, "bulk": 1})
    assert p.resolve("urgent") == 0
    assert p.resolve("bulk") == 1
    assert p.resolve(1) == 1
    with pytest.raises(ConfigurationError):
        p.resolve("normal")
    with pytest.raises(ConfigurationError):
        p.resolve(2)


@pytest.mark.parametrize("bad", ["urgent", "HIGH", "", " high", "0"])
def test_resolve_unknown_name(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid priority"):
        Priorities().resolve(bad)


@pytest.mark.parametrize("bad", [-1, 3, 100, -100])
def test_resolve_out_of_range_index(bad: int) -> None:
    with pytest.raises(ConfigurationError, match="invalid priority"):
        Priorities().resolve(bad)


@pytest.mark.parametrize("bad", [True, False])
def test_resolve_rejects_bools(bad: bool) -> None:
    with pytest.raises(ConfigurationError):
        Priorities().resolve(bad)


@pytest.mark.parametrize("bad", [1.0, None, [0], b"high"])
def test_resolve_rejects_other_types(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        Priorities().resolve(bad)


def test_name_of_level() -> None:
    p = Priorities()
    assert [p.name(i) for i in range(3)] == ["high", "normal", "low"]
    assert p.name(7) == "7"
    assert p.name(-1) == "-1"


@pytest.mark.parametrize("levels", [{}, {"a": 0}, {"a": -1}, {"a": 1.5}, {"a": "1"}, {"a": 2, "b": 0}])
def test_invalid_levels(levels: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Priorities(levels)


# --- Fairness.split -------------------------------------------------------------------------------


def single_picks(fair: Fairness, available: Sequence[int], calls: int) -> list[int]:
    """The level chosen by each of ``calls`` reservations of one slot."""
    picks = []
    for _ in range(calls):
        take = fair.split(available, 1)
        assert sum(take) == 1
        picks.append(take.index(1))
    return picks


def test_split_ten_slots_follows_weights() -> None:
    assert Fairness([6, 3, 1]).split([PLENTY] * 3, 10) == [6, 3, 1]


def test_split_repeats_exactly_every_round() -> None:
    fair = Fairness([6, 3, 1])
    for _ in range(5):
        assert fair.split([PLENTY] * 3, 10) == [6, 3, 1]
    assert fair.split([PLENTY] * 3, 100) == [60, 30, 10]


def test_split_is_deterministic() -> None:
    a, b = Fairness([6, 3, 1]), Fairness([6, 3, 1])
    pattern = [([5, 0, 3], 2), ([1, 4, 4], 3), ([0, 0, 9], 1), ([9, 9, 9], 4)]
    assert [a.split(av, n) for av, n in pattern] == [b.split(av, n) for av, n in pattern]


def test_split_interleaves_smoothly() -> None:
    # high is not served six times in a row before the others get a turn
    picks = single_picks(Fairness([6, 3, 1]), [PLENTY] * 3, 10)
    runs = "".join("HNL"[p] for p in picks)
    assert "HHHH" not in runs
    assert Counter(picks) == {HIGH: 6, NORMAL: 3, LOW: 1}


def test_single_slot_long_run_proportions_match_weights() -> None:
    picks = single_picks(Fairness([6, 3, 1]), [PLENTY] * 3, 1000)
    assert Counter(picks) == {HIGH: 600, NORMAL: 300, LOW: 100}


def test_single_slot_long_run_among_non_empty_levels() -> None:
    picks = single_picks(Fairness([6, 3, 1]), [PLENTY, 0, PLENTY], 700)
    assert Counter(picks) == {HIGH: 600, LOW: 100}
    picks = single_picks(Fairness([6, 3, 1]), [0, PLENTY, PLENTY], 400)
    assert Counter(picks) == {NORMAL: 300, LOW: 100}


def test_empty_level_gets_nothing_and_its_share_goes_to_others() -> None:
    take = Fairness([6, 3, 1]).split([0, PLENTY, PLENTY], 10)
    assert take[HIGH] == 0
    assert sum(take) == 10
    assert take[NORMAL] in (7, 8)  # 3:1 of 10
    assert take[LOW] in (2, 3)


def test_only_one_level_non_empty_takes_everything() -> None:
    assert Fairness([6, 3, 1]).split([0, 0, PLENTY], 10) == [0, 0, 10]
    assert Fairness([6, 3, 1]).split([0, PLENTY, 0], 10) == [0, 10, 0]


def test_nothing_available_takes_nothing() -> None:
    assert Fairness([6, 3, 1]).split([0, 0, 0], 10) == [0, 0, 0]


def test_zero_limit_takes_nothing() -> None:
    assert Fairness([6, 3, 1]).split([5, 5, 5], 0) == [0, 0, 0]


def test_availability_smaller_than_share_is_respected() -> None:
    take = Fairness([6, 3, 1]).split([2, PLENTY, PLENTY], 10)
    assert take[HIGH] == 2
    assert sum(take) == 10
    take = Fairness([6, 3, 1]).split([1, 1, 1], 10)
    assert take == [1, 1, 1]


def test_split_invariants_under_random_availability() -> None:
    rng = random.Random(2024)
    fair = Fairness([6, 3, 1])
    for _ in range(3000):
        available = [rng.choice([0, 0, 1, 2, 5, 50]) for _ in range(3)]
        limit = rng.randint(0, 12)
        take = fair.split(available, limit)
        assert sum(take) == min(limit, sum(available))
        assert all(0 <= t <= a for t, a in zip(take, available, strict=True))


def test_newly_non_empty_high_is_served_next() -> None:
    fair = Fairness([6, 3, 1])
    assert single_picks(fair, [0, 0, PLENTY], 25) == [LOW] * 25
    assert fair.split([PLENTY, 0, PLENTY], 1) == [1, 0, 0]


def test_newly_non_empty_high_is_served_next_after_normal_and_low() -> None:
    for calls in range(1, 30):
        fair = Fairness([6, 3, 1])
        single_picks(fair, [0, PLENTY, PLENTY], calls)
        assert fair.split([PLENTY, PLENTY, PLENTY], 1) == [1, 0, 0], calls


def test_low_never_starves_under_saturated_high() -> None:
    # Weights 6 and 1 present: smooth WRR repeats HHHLHHH, so every window of 7 consecutive
    # single-slot reservations holds exactly one low.
    picks = single_picks(Fairness([6, 3, 1]), [PLENTY, 0, PLENTY], 700)
    for start in range(len(picks) - 6):
        assert picks[start : start + 7].count(LOW) == 1, start


def test_low_gets_one_in_every_ten_with_all_levels_saturated() -> None:
    picks = single_picks(Fairness([6, 3, 1]), [PLENTY] * 3, 500)
    for start in range(len(picks) - 9):
        window = picks[start : start + 10]
        assert (window.count(HIGH), window.count(NORMAL), window.count(LOW)) == (6, 3, 1), start


def test_low_is_served_within_a_bounded_wait_whatever_the_higher_levels_do() -> None:
    # Exhaustive over every on/off pattern of high and normal, with low always ready and one slot
    # per reservation. Emptied levels have their credit reset, so the wait can exceed the steady
    # state's 10, but it is bounded: low waits at most 22 reservations (served by the 23rd).
    choices = [(h, n, 1) for h in (0, 1) for n in (0, 1)]

    def step(state: tuple[int, ...], available: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        fair = Fairness([6, 3, 1])
        fair.current = list(state)
        take = fair.split(available, 1)
        return tuple(fair.current), take.index(1)

    reachable: set[tuple[int, ...]] = set()
    todo = [(0, 0, 0)]
    while todo:
        state = todo.pop()
        if state not in reachable:
            reachable.add(state)
            todo.extend(step(state, av)[0] for av in choices)
    assert len(reachable) < 10_000  # the credits stay bounded

    # Non-low steps strictly raise low's credit, so this recursion terminates.
    memo: dict[tuple[int, ...], int] = {}

    def longest_wait(state: tuple[int, ...]) -> int:
        if state not in memo:
            best = 0
            for av in choices:
                nxt, picked = step(state, av)
                if picked != LOW:
                    best = max(best, 1 + longest_wait(nxt))
            memo[state] = best
        return memo[state]

    worst = 0
    for state in sorted(reachable, key=lambda s: -s[LOW]):  # high credit first: shallow recursion
        worst = max(worst, longest_wait(state))
    assert worst <= 22


def test_fairness_keeps_state_across_calls() -> None:
    # two calls of 5 slots equal one call of 10
    fair = Fairness([6, 3, 1])
    first = fair.split([PLENTY] * 3, 5)
    second = fair.split([PLENTY] * 3, 5)
    assert [a + b for a, b in zip(first, second, strict=True)] == [6, 3, 1]


# --- Queues: weights and strict order -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (["a", "b"], {"a": 1, "b": 1}),
        (["a:3", " b:1 "], {"a": 3, "b": 1}),
        (["v:2:1", "w:x"], {"v:2": 1, "w:x": 1}),  # the weight is the digits after the last colon
    ],
)
def test_parse_queues(spec: list[str], expected: dict[str, int]) -> None:
    from conveyor.priority import parse_queues

    assert parse_queues(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [([], "at least one"), (["a:0"], ">= 1"), (["a:-2"], ">= 1"), (["a", "a:2"], "twice")],
)
def test_parse_queues_refuses(spec: list[str], message: str) -> None:
    from conveyor.priority import parse_queues

    with pytest.raises(ConfigurationError, match=message):
        parse_queues(spec)


def test_weights_and_strict_order_exclude_each_other() -> None:
    with pytest.raises(ConfigurationError, match="exclude"):
        Fairness((1,), {"a": 2}, strict=True)


def test_deal_one_slot_at_a_time_follows_the_weights() -> None:
    fairness = Fairness((1,), {"a": 3, "b": 1})
    got = Counter(
        q
        for _ in range(400)
        for q, n in zip("ab", fairness.deal(0, 1, ["a", "b"], [PLENTY, PLENTY]), strict=True)
        for _ in range(n)
    )
    assert got == Counter({"a": 300, "b": 100})


def test_deal_gives_an_empty_queues_share_to_the_others_and_banks_nothing() -> None:
    fairness = Fairness((1,))
    for _ in range(10):
        assert fairness.deal(0, 1, ["a", "b"], [PLENTY, 0]) == [1, 0]
    # b filled again: it gets its turn, not the ten it missed.
    got = [fairness.deal(0, 1, ["a", "b"], [PLENTY, PLENTY]) for _ in range(4)]
    assert sorted(map(tuple, got)) == [(0, 1), (0, 1), (1, 0), (1, 0)]


def test_strict_deal_fills_in_order() -> None:
    fairness = Fairness((1,), strict=True)
    assert fairness.deal(0, 5, ["a", "b", "c"], [3, 1, 9]) == [3, 1, 1]
    assert fairness.deal(0, 1, ["a", "b"], [PLENTY, PLENTY]) == [1, 0]


def test_queue_state_round_trips_level_by_level() -> None:
    fairness = Fairness((2, 1))
    fairness.deal(1, 1, ["a", "b"], [5, 5])
    flat = fairness.queue_state(["a", "b"])
    other = Fairness((2, 1))
    other.set_queue_state(["a", "b"], flat)
    assert other.queue_current == fairness.queue_current
    assert len(flat) == 4
