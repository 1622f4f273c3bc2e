"""Rate and concurrency limits, fairness between their keys, throttling (docs/flow-control.md).

Time is passed explicitly: a bucket's tokens are a function of the store's clock, which these
tests play.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import msgspec

from conveyor.brokers import Broker
from conveyor.records import Message, Outcome, Rule

from .helpers import HIGH, NORMAL, enqueue, error, info, make_message, reserve


def limited(*rules: Rule, queue: str = "q", priority: int = NORMAL, **kwargs: object) -> Message:
    return msgspec.structs.replace(make_message(queue=queue, priority=priority, **kwargs), limits=rules)  # type: ignore[arg-type]


def rate(key: str, per_second: float, burst: int = 1) -> Rule:
    return Rule(key=key, rate=per_second, burst=burst)


def slots(key: str, n: int) -> Rule:
    return Rule(key=key, concurrency=n)


def fill(
    broker: Broker, t0: float, n: int, *rules: Rule, queue: str = "q", priority: int = NORMAL
) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 500):
        batch = [limited(*rules, queue=queue, priority=priority) for _ in range(min(500, n - start))]
        ids += enqueue(broker, t0, *batch)
    return ids


def ok(broker: Broker, now: float, *outcomes: Outcome) -> None:
    assert [s.status for s in broker.ack(outcomes, now=now)] == ["ok"] * len(outcomes)


# -- rate ----------------------------------------------------------------------------------------


def test_a_rate_allows_its_burst_then_one_start_per_interval(broker, t0):
    fill(broker, t0, 40, rate("k", 10, burst=3))

    assert len(reserve(broker, t0, limit=40)) == 3
    assert reserve(broker, t0, limit=40) == []
    assert len(reserve(broker, t0 + 0.1, limit=40)) == 1
    assert reserve(broker, t0 + 0.15, limit=40) == []
    assert len(reserve(broker, t0 + 0.35, limit=40)) == 2
    # An idle spell saves at most `burst` tokens.
    assert len(reserve(broker, t0 + 60, limit=40)) == 3


def test_starts_in_every_window_stay_under_rate_times_length_plus_burst(broker, t0):
    per_second, burst = 20.0, 4
    fill(broker, t0, 300, rate("k", per_second, burst))
    starts: list[float] = []
    now = t0
    while now < t0 + 5:
        starts += [now] * len(reserve(broker, now, limit=7))
        now += 0.013
    for i, a in enumerate(starts):
        for j in range(i, len(starts)):
            window = starts[j] - a
            assert j - i + 1 <= per_second * window + burst + 1e-9, (i, j, window)
    # With a backlog the rate is used: within one token of rate * 5 s + burst.
    assert len(starts) >= per_second * (now - 0.013 - t0) + burst - 1


def test_a_throttled_job_spends_no_attempt_and_others_pass_it(broker, t0):
    fill(broker, t0, 5, rate("slow", 1))
    (plain,) = enqueue(broker, t0 + 1, make_message())

    first = reserve(broker, t0 + 2, limit=10)
    assert len(first) == 2 and plain in {d.id for d in first}
    later = reserve(broker, t0 + 3, limit=10)
    assert len(later) == 1 and later[0].attempt == 1


def test_rate_keys_are_scoped_to_their_queue(broker, t0):
    fill(broker, t0, 5, rate("k", 1), queue="a")
    fill(broker, t0, 5, rate("k", 1), queue="b")

    got = reserve(broker, t0, queues=["a", "b"], limit=10)

    assert sorted(d.queue for d in got) == ["a", "b"]


def test_every_key_of_a_job_must_allow_it(broker, t0):
    shared = rate("task:t", 100, burst=100)
    fill(broker, t0, 5, shared, rate("acct:1", 1))
    fill(broker, t0, 5, shared, rate("acct:2", 1, burst=2))

    got = reserve(broker, t0, limit=20)

    assert len(got) == 3  # one of acct:1, two of acct:2


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrency_holds_a_slot_until_the_job_leaves_running(broker, t0):
    fill(broker, t0, 10, slots("k", 2))

    a, b = reserve(broker, t0, limit=10)
    assert reserve(broker, t0, limit=10) == []
    ok(broker, t0, Outcome(a.id, a.token, "succeeded", result=b"null"))
    (c,) = reserve(broker, t0, limit=10)
    ok(broker, t0, Outcome(b.id, b.token, "retry", delay=0, error=error(1)))
    (d,) = reserve(broker, t0, limit=10)
    ok(broker, t0, Outcome(c.id, c.token, "dead", error=error(1)))
    assert broker.release([(d.id, d.token)]) == 1
    assert len(reserve(broker, t0, limit=10)) == 2


def test_a_reclaimed_lease_returns_its_slot_and_a_stale_ack_frees_nothing(broker, t0):
    fill(broker, t0, 5, slots("k", 1))
    (first,) = reserve(broker, t0, limit=5, lease=10)

    assert reserve(broker, t0 + 5, limit=5) == []
    broker.reclaim(now=t0 + 11)
    (second,) = reserve(broker, t0 + 11, limit=5, worker="w2")
    # The first worker's late outcome is refused and frees no slot.
    (status,) = broker.ack([Outcome(first.id, first.token, "succeeded", result=b"null")], now=t0 + 12)
    assert status.status == "lost"
    assert reserve(broker, t0 + 12, limit=5) == []
    ok(broker, t0 + 12, Outcome(second.id, second.token, "succeeded", result=b"null"))
    assert len(reserve(broker, t0 + 12, limit=5)) == 1


def test_a_queue_limit_counts_every_job_of_the_queue(broker, t0):
    fill(broker, t0, 5, rate("k", 1000, burst=1000))
    enqueue(broker, t0, *[make_message() for _ in range(5)])
    broker.set_limit("q", Rule(key="", concurrency=3))

    running = reserve(broker, t0, limit=10)
    assert len(running) == 3
    assert reserve(broker, t0, limit=10) == []
    assert broker.clear_limit("q", "") is True
    assert len(reserve(broker, t0, limit=10)) == 7
    assert broker.clear_limit("q", "") is False


def test_a_run_time_limit_overrides_the_declared_one_until_cleared(broker, t0):
    fill(broker, t0, 20, slots("k", 1))
    broker.set_limit("q", slots("k", 4))

    assert len(reserve(broker, t0, limit=20)) == 4
    broker.clear_limit("q", "k")
    assert reserve(broker, t0, limit=20) == []  # 4 running, the declaration allows 1


# -- throttling from a task ----------------------------------------------------------------------


def test_throttled_gives_the_attempt_back_and_closes_the_key(broker, t0):
    fill(broker, t0, 3, rate("k", 100, burst=100))
    (other,) = fill(broker, t0, 1, rate("other", 100))
    first, *_ = [d for d in reserve(broker, t0, limit=1) if d.queue == "q"]
    assert first.id != other

    ok(broker, t0, Outcome(first.id, first.token, "throttled", delay=5, error=error(1, "RateLimited")))

    assert info(broker, first.id, t0).attempt == 0
    got = reserve(broker, t0 + 1, limit=10)
    assert [d.id for d in got] == [other]  # k is closed until t0 + 5
    again = reserve(broker, t0 + 5, limit=10)
    assert first.id in {d.id for d in again}
    (mine,) = [d for d in again if d.id == first.id]
    assert (mine.attempt, mine.throttled) == (1, 1)


# -- fairness ------------------------------------------------------------------------------------


def test_groups_take_turns_whatever_their_backlog(broker, t0):
    fill(broker, t0, 400, slots("tenant:a", 1000))
    b = fill(broker, t0 + 1, 5, slots("tenant:b", 1000))

    order = [d.id for _ in range(20) for d in reserve(broker, t0 + 2, limit=1)]

    # B's five jobs start among the first ten: one turn each.
    assert set(b) <= set(order[:10]), order[:10]


def test_a_batch_alternates_between_groups_and_the_unlimited(broker, t0):
    group = dict.fromkeys(fill(broker, t0, 100, slots("tenant:a", 1000)), "a")
    group |= dict.fromkeys(fill(broker, t0, 100, slots("tenant:b", 1000)), "b")
    group |= dict.fromkeys(enqueue(broker, t0, *[make_message() for _ in range(100)]), "none")

    got = Counter(group[d.id] for d in reserve(broker, t0, limit=30))

    assert got == {"a": 10, "b": 10, "none": 10}, got


def test_priority_still_holds_among_the_jobs_limits_allow(broker, t0):
    (high,) = fill(broker, t0, 1, rate("k", 1), priority=HIGH)
    fill(broker, t0, 1, rate("k", 1), priority=HIGH)
    normal = fill(broker, t0, 3, rate("n", 100, burst=100))

    first = reserve(broker, t0, limit=1)
    assert [d.id for d in first] == [high]
    # The second high job waits for k's token; normal jobs run meanwhile.
    assert {d.id for d in reserve(broker, t0, limit=5)} == set(normal)


# -- listing -------------------------------------------------------------------------------------


def test_limits_lists_rules_slots_and_tokens(broker, t0):
    fill(broker, t0, 4, Rule(key="k", rate=2, burst=2, concurrency=3))
    broker.set_limit("q", Rule(key="", concurrency=10))
    reserve(broker, t0, limit=10)

    listed = {i.key: i for i in broker.limits("q", now=t0)}

    queue, k = listed[""], listed["k"]
    assert (queue.concurrency, queue.override, queue.running) == (10, True, 2)
    assert (k.rate, k.burst, k.concurrency, k.override, k.running) == (2, 2, 3, False, 2)
    assert k.tokens == 0
    assert broker.limits("other", now=t0) == []


# -- waiting -------------------------------------------------------------------------------------


def test_wait_returns_when_the_next_token_is_due(broker, open_handle):
    now = broker.time()
    fill(broker, now, 3, rate("k", 2))
    assert len(reserve(broker, now, limit=3)) == 1

    began = time.monotonic()
    broker.wait(["q"], timeout=20)

    assert time.monotonic() - began < 10  # the token was due in 0.5 s, not at the timeout


def test_a_freed_slot_wakes_a_waiting_worker(broker, open_handle):
    now = broker.time()
    fill(broker, now, 3, slots("k", 1))
    (running,) = reserve(broker, now, limit=3)
    other = open_handle()

    timer = threading.Timer(
        0.3, lambda: other.ack([Outcome(running.id, running.token, "succeeded", result=b"null")])
    )
    timer.start()
    began = time.monotonic()
    broker.wait(["q"], timeout=20)
    timer.join()

    assert time.monotonic() - began < 10
    assert len(reserve(broker, broker.time(), limit=3)) == 1


def test_stats_count_the_ready_jobs_limits_hold_back(broker, t0):
    fill(broker, t0, 5, rate("k", 1))
    fill(broker, t0, 4, slots("s", 2))
    enqueue(broker, t0, *[make_message() for _ in range(3)])
    assert broker.stats(["q"], now=t0)[0].throttled == 0

    reserve(broker, t0, limit=20)  # 1 of k, 2 of s, 3 plain; the rest is held back

    (stats,) = broker.stats(["q"], now=t0)
    assert (stats.total("ready"), stats.throttled) == (6, 6)
    # A queue limit that allows no start holds back every ready job, limited or not.
    (plain,) = enqueue(broker, t0, make_message())
    broker.set_limit("q", Rule(key="", concurrency=1))
    assert [d.id for d in reserve(broker, t0 + 0.5, limit=20)] == [plain]  # takes the queue's slot
    enqueue(broker, t0, make_message())
    (stats,) = broker.stats(["q"], now=t0 + 0.5)
    assert (stats.total("ready"), stats.throttled) == (7, 7)


def _blocks(broker: Broker, seconds: float = 0.5) -> bool:
    """Whether ``wait`` sleeps (rather than returning at once, which would make workers spin)."""
    broker.wait(["q"], timeout=0.05)  # take any wake-up already sent
    began = time.monotonic()
    broker.wait(["q"], timeout=seconds)
    return time.monotonic() - began >= seconds * 0.8


def test_wait_sleeps_when_every_limited_job_is_claimed(broker):
    now = broker.time()
    fill(broker, now, 3, slots("a", 5))
    fill(broker, now, 2, slots("b", 5))

    assert len(reserve(broker, now, limit=5)) == 5

    assert _blocks(broker)


def test_wait_sleeps_when_the_limited_jobs_left_are_held_back(broker):
    now = broker.time()
    fill(broker, now, 2, slots("s", 1))
    fill(broker, now, 2, rate("r", 0.01))

    assert len(reserve(broker, now, limit=10)) == 2  # one each: the rest waits for a slot or a token

    assert _blocks(broker)


def test_a_paused_task_s_limited_jobs_wait_for_resume(broker, t0):
    paused = fill(broker, t0, 4, slots("acct:1", 10))
    other = enqueue(broker, t0, *[limited(slots("acct:1", 10), task="other") for _ in range(2)])
    broker.pause("q", "t")

    got = reserve(broker, t0, limit=10)
    assert {d.id for d in got} == set(other)

    broker.resume("q", "t")
    again = reserve(broker, t0 + 1, limit=10)
    assert {d.id for d in again} == set(paused)


def test_a_paused_queue_claims_nothing_whatever_its_limits(broker, t0):
    fill(broker, t0, 3, rate("k", 100, burst=10))
    broker.pause("q")

    assert reserve(broker, t0, limit=10) == []
    broker.resume("q")
    assert len(reserve(broker, t0, limit=10)) == 3
