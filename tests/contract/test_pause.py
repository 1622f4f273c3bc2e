"""pause and resume: a paused queue (or a task in it) is not reserved from, on every worker, from
the moment ``pause`` returns; enqueues, running jobs and their acks carry on; ``resume`` makes
the jobs reservable again. The pause is stored, so every handle on the store sees it."""

from __future__ import annotations

import threading
import time

import pytest
from waiting import wait_for

from conveyor.brokers.base import PARK_BUDGET
from conveyor.errors import ConfigurationError
from conveyor.priority import Fairness
from conveyor.records import Pause

from .helpers import (
    HIGH,
    LOW,
    WEIGHTS,
    enqueue,
    info,
    make_message,
    reserve,
    reserve_one,
    retried,
    statuses,
    succeeded,
    total,
)
from .test_wait import PROMPT, wait_until


def test_a_paused_queue_is_not_reserved_from_but_others_are(broker, open_handle, t0):
    enqueue(broker, t0, make_message(queue="q"), make_message(queue="q"), make_message(queue="other"))

    broker.pause("q")

    other_worker = open_handle()  # another process's handle sees the stored pause
    assert reserve(other_worker, now=t0 + 1, queues=["q"]) == []
    got = reserve(broker, now=t0 + 1, queues=["q", "other"])
    assert [d.queue for d in got] == ["other"]


def test_pausing_a_task_holds_only_that_task_of_the_queue(broker, t0):
    a1, b1, a2, b2 = (make_message(task=t) for t in ("a", "b", "a", "b"))
    enqueue(broker, t0, a1, b1, a2, b2)

    broker.pause("q", task="a")

    got = reserve(broker, now=t0 + 1, limit=10)
    assert sorted(d.id for d in got) == sorted([b1.id, b2.id])
    assert reserve(broker, now=t0 + 2) == []


def test_a_paused_task_in_every_level_and_behind_a_backlog(broker, t0):
    paused = [make_message(task="a", priority=level) for level in (HIGH, LOW) for _ in range(30)]
    enqueue(broker, t0, *paused)
    free = [make_message(task="b", priority=level) for level in (HIGH, LOW)]
    enqueue(broker, t0 + 1, *free)  # due after the whole paused backlog

    broker.pause("q", task="a")

    claimed: list[str] = []
    for i in range(20):  # each call does a bounded amount of work; the free jobs come through
        claimed += [d.id for d in reserve(broker, now=t0 + 2 + i, limit=4)]
        if len(claimed) == 2:
            break
    assert sorted(claimed) == sorted(m.id for m in free)
    assert reserve(broker, now=t0 + 30, limit=10) == []


def test_enqueue_is_accepted_while_paused_and_counted_ready(broker, t0):
    broker.pause("q")
    m = make_message()
    enqueue(broker, t0, m)

    assert info(broker, m.id, now=t0 + 1).state == "ready"
    assert total(broker, "q", "ready", now=t0 + 1) == 1
    assert reserve(broker, now=t0 + 1) == []


def test_jobs_of_a_paused_task_stay_listed_ready_and_cancellable(broker, t0):
    a, b = make_message(task="a"), make_message(task="a")
    enqueue(broker, t0, a, b)
    broker.pause("q", task="a")
    assert reserve(broker, now=t0 + 1) == []  # a reservation may set them aside

    assert info(broker, a.id, now=t0 + 2).state == "ready"
    assert total(broker, "q", "ready", now=t0 + 2) == 2
    assert sorted(j.id for j in broker.jobs(queue="q", state="ready", now=t0 + 2)) == sorted([a.id, b.id])
    assert broker.cancel(a.id, now=t0 + 3) is True
    assert total(broker, "q", "ready", now=t0 + 3) == 1

    broker.resume("q", task="a")
    assert [d.id for d in reserve(broker, now=t0 + 4)] == [b.id]


def test_a_running_job_acks_while_its_queue_is_paused(broker, t0):
    m, retry = make_message(), make_message()
    enqueue(broker, t0, m, retry)
    d, r = reserve(broker, now=t0, limit=2)

    broker.pause("q")

    assert statuses(broker, [succeeded(d), retried(r)], now=t0 + 1) == ["ok", "ok"]
    assert info(broker, m.id, now=t0 + 2).state == "succeeded"
    assert reserve(broker, now=t0 + 2) == []  # the retry is due, and stays pending
    broker.resume("q")
    assert [x.id for x in reserve(broker, now=t0 + 3)] == [r.id]


def test_scheduled_jobs_become_due_but_stay_pending(broker, t0):
    broker.pause("q")
    m = make_message(delay=10)
    enqueue(broker, t0, m)

    assert reserve(broker, now=t0 + 20) == []
    assert info(broker, m.id, now=t0 + 20).state == "ready"

    broker.resume("q")
    assert reserve_one(broker, now=t0 + 21).id == m.id


def test_resume_makes_the_jobs_reservable_in_their_order(broker, t0):
    first, second, third = make_message(task="a"), make_message(task="b"), make_message(task="a")
    enqueue(broker, t0, first)
    enqueue(broker, t0 + 1, second)
    enqueue(broker, t0 + 2, third)
    broker.pause("q", task="a")
    assert [d.id for d in reserve(broker, now=t0 + 3)] == [second.id]

    broker.resume("q", task="a")

    assert [d.id for d in reserve(broker, now=t0 + 4)] == [first.id, third.id]


def test_pauses_are_listed_and_idempotent(broker, open_handle):
    assert broker.paused() == []

    broker.pause("q")
    broker.pause("q")
    broker.pause("q", task="a")
    broker.pause("other", task="b")

    listed = open_handle().paused()
    assert [(p.queue, p.task) for p in listed] == [("other", "b"), ("q", None), ("q", "a")]
    assert all(isinstance(p, Pause) and p.since > 0 for p in listed)

    broker.resume("q")
    broker.resume("q")
    broker.resume("never-paused", task="x")
    assert [(p.queue, p.task) for p in broker.paused()] == [("other", "b"), ("q", "a")]
    assert [(p.queue, p.task) for p in broker.paused(["q"])] == [("q", "a")]


def test_a_queue_pause_and_a_task_pause_are_separate(broker, t0):
    m = make_message(task="a")
    enqueue(broker, t0, m)
    broker.pause("q")
    broker.pause("q", task="a")

    broker.resume("q")
    assert reserve(broker, now=t0 + 1) == []  # the task is still paused
    broker.resume("q", task="a")
    assert reserve_one(broker, now=t0 + 2).id == m.id


@pytest.mark.parametrize(
    ("queue", "task"),
    [
        ("", None),
        ("bad queue", None),
        ("q" * 129, None),
        ("q{x}", None),
        (b"q", None),
        ("q", ""),
        ("q", "t" * 256),
    ],
)
def test_bad_names_are_refused_and_change_nothing(broker, queue, task):
    with pytest.raises(ConfigurationError):
        broker.pause(queue, task=task)
    with pytest.raises(ConfigurationError):
        broker.resume(queue, task=task)
    assert broker.paused() == []


def test_resume_wakes_the_workers_waiting_on_the_queue(broker, open_handle, t0):
    enqueue(broker, t0, make_message())
    broker.pause("q")
    waiter = open_handle()
    waiter.wait(["q"], timeout=0.0)  # subscribed from here on
    resumed: list[float] = []

    def resume_later() -> None:
        time.sleep(0.2)
        resumed.append(time.time())
        broker.resume("q")

    thread = threading.Thread(target=resume_later)
    thread.start()
    latency = wait_until(waiter, ["q"], resumed)
    thread.join()

    assert latency < PROMPT
    assert len(reserve(waiter, now=time.time() + 1)) == 1


def test_the_due_jobs_of_a_paused_queue_do_not_end_a_wait(broker, t0):
    """Idle workers of a paused queue sleep until resume wakes them, rather than spin on its
    due jobs (a wait may end early, but not at once: the bound is half the timeout)."""
    enqueue(broker, t0, make_message())
    broker.pause("q")
    broker.wait(["q"], timeout=0.0)  # subscribed from here on

    began = time.monotonic()
    broker.wait(["q"], timeout=0.4)
    assert time.monotonic() - began >= 0.2


def test_a_backlog_larger_than_one_call_parks_is_parked_over_calls_and_all_resumed(broker, t0):
    many = PARK_BUDGET + 50
    for start in range(0, many, 500):
        enqueue(broker, t0, *(make_message(task="a") for _ in range(min(500, many - start))))
    b = make_message(task="b")
    enqueue(broker, t0 + 1, b)
    broker.pause("q", task="a")

    calls, got = 0, []
    while not got:  # the first call spends its budget parking and takes nothing
        got = reserve(broker, now=t0 + 2, limit=5)
        calls += 1
    assert [d.id for d in got] == [b.id] and calls == 2
    assert total(broker, "q", "ready", now=t0 + 3) == many

    broker.resume("q", task="a")
    assert len(reserve(broker, now=t0 + 4, limit=2 * many)) == many


def test_no_claim_after_pause_returns_under_concurrent_claimers(broker, open_handle):
    """Claimers on handles of their own reserve and acknowledge as fast as they can; the pause
    lands among them. No job is claimed after pause returned, though each claimer reserved again
    after that: the jobs left ready then are all left, and every start (on the store's clock) is
    no later than the clock read after the pause returned."""
    for _ in range(4):
        broker.enqueue([make_message() for _ in range(500)])
    stop = threading.Event()
    calls = [0, 0, 0]
    errors: list[BaseException] = []

    def claim(i: int, handle) -> None:
        try:
            while not stop.is_set():
                got = handle.reserve(["q"], 3, 30.0, f"w{i}", Fairness(WEIGHTS))
                handle.ack([succeeded(d) for d in got])
                calls[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(i, open_handle())) for i in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: total(broker, "q", "succeeded", now=broker.time()) >= 60, what="claims")
        broker.pause("q")
        paused_at = broker.time()
        left = total(broker, "q", "ready", now=paused_at)
        after = list(calls)
        wait_for(lambda: all(c >= a + 5 for c, a in zip(calls, after, strict=True)), what="more reservations")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    done = broker.jobs(queue="q", state="succeeded", limit=2000)
    assert max(j.started_at or 0.0 for j in done) <= paused_at
    assert total(broker, "q", "ready", now=broker.time()) == left == 2000 - len(done)
