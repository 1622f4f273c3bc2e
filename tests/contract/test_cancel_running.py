"""request_cancel, cancelling, wait_cancel and the cancelled and snoozed outcomes
(docs/job-control.md), the same on every store."""

from __future__ import annotations

import threading
import time

import msgspec

from conveyor.ids import new_id
from conveyor.records import Outcome, Rule

from .helpers import (
    buried,
    enqueue,
    error,
    info,
    make_message,
    reserve,
    reserve_one,
    retried,
    statuses,
    succeeded,
    total,
)


def cancelled(d, **kwargs):
    return Outcome(d.id, d.token, "cancelled", error=error(d.attempt, "JobCancelled", "cancelled"), **kwargs)


def snoozed(d, delay=10.0, max_snoozes=100):
    return Outcome(
        d.id,
        d.token,
        "snoozed",
        delay=delay,
        max_snoozes=max_snoozes,
        error=error(d.attempt, "Snooze", "cap"),
    )


# -- request_cancel --------------------------------------------------------------------------


def test_a_pending_job_is_cancelled_at_once(broker, t0):
    ready, later = make_message(), make_message(delay=60)
    enqueue(broker, t0, ready, later)

    assert broker.request_cancel(ready.id, 5.0, now=t0 + 1) == "cancelled"
    assert broker.request_cancel(later.id, 5.0, now=t0 + 1) == "cancelled"

    assert info(broker, ready.id, now=t0 + 2).state == "cancelled"
    assert info(broker, later.id, now=t0 + 100).state == "cancelled"
    assert reserve(broker, now=t0 + 100) == []
    assert broker.request_cancel(ready.id, 5.0, now=t0 + 3) == "finished"


def test_finished_and_unknown_jobs_are_left_alone(broker, t0):
    ok, bad = make_message(), make_message()
    enqueue(broker, t0, ok, bad)
    d1, d2 = reserve(broker, now=t0, limit=2)
    statuses(broker, [succeeded(d1, result=b"1"), buried(d2)], now=t0 + 1)

    assert broker.request_cancel(d1.id, 5.0, now=t0 + 2) == "finished"
    assert broker.request_cancel(d2.id, 5.0, now=t0 + 2) == "finished"
    assert broker.request_cancel(new_id(), 5.0, now=t0 + 2) == "missing"

    assert info(broker, d1.id, now=t0 + 2).state == "succeeded"
    assert info(broker, d1.id, now=t0 + 2).result == b"1"
    assert info(broker, d2.id, now=t0 + 2).state == "dead"


def test_a_running_job_is_marked_and_reported_to_its_lease_holder(broker, t0):
    m, other = make_message(), make_message()
    enqueue(broker, t0, m, other)
    d, o = reserve(broker, now=t0, limit=2)
    leases = [(d.id, d.token), (o.id, o.token)]
    assert broker.cancelling(leases) == {}

    assert broker.request_cancel(m.id, 2.5, now=t0 + 1) == "cancelling"
    assert broker.request_cancel(m.id, 9.0, now=t0 + 1) == "cancelling"  # marked already

    job = info(broker, m.id, now=t0 + 1)
    assert (job.state, job.cancelling) == ("running", True)
    assert info(broker, o.id, now=t0 + 1).cancelling is False
    assert broker.cancelling(leases) == {m.id: 2.5}
    assert broker.cancelling([(d.id, d.token + 1)]) == {}  # not that lease: not yours to cancel
    assert broker.extend(leases, lease=30, now=t0 + 2) == []  # the lease is still held meanwhile


def test_the_cancelled_outcome_ends_the_job_and_commits_nothing(broker, t0):
    m, follow = make_message(), make_message(queue="q")
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)
    broker.request_cancel(m.id, 1.0, now=t0 + 1)

    assert statuses(broker, [cancelled(d)], now=t0 + 2) == ["ok"]

    job = info(broker, m.id, now=t0 + 3)
    assert (job.state, job.cancelling, job.finished_at) == ("cancelled", False, t0 + 2)
    assert job.errors[-1]["type"] == "JobCancelled"
    assert broker.get(follow.id, now=t0 + 3) is None
    assert total(broker, "q", "cancelled", now=t0 + 3) == 1
    assert total(broker, "q", "running", now=t0 + 3) == 0
    assert broker.cancelling([(d.id, d.token)]) == {}
    assert reserve(broker, now=t0 + 100) == []
    assert broker.request_cancel(m.id, 1.0, now=t0 + 4) == "finished"


def test_the_cancelled_outcome_is_fenced(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    first = reserve_one(broker, now=t0, lease=5)
    broker.reclaim(now=t0 + 10)
    second = reserve_one(broker, now=t0 + 10, worker="w2")

    assert statuses(broker, [cancelled(first)], now=t0 + 11) == ["lost"]
    assert info(broker, m.id, now=t0 + 11).state == "running"
    assert statuses(broker, [succeeded(second)], now=t0 + 12) == ["ok"]


def test_success_wins_over_a_cancel_that_has_not_landed(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)
    assert broker.request_cancel(m.id, 1.0, now=t0 + 1) == "cancelling"

    assert statuses(broker, [succeeded(d, result=b'"done"')], now=t0 + 2) == ["ok"]

    job = info(broker, m.id, now=t0 + 3)
    assert (job.state, job.result, job.cancelling) == ("succeeded", b'"done"', False)
    assert broker.request_cancel(m.id, 1.0, now=t0 + 3) == "finished"


def test_a_failure_of_a_job_being_cancelled_is_not_retried(broker, t0):
    m, n = make_message(), make_message()
    enqueue(broker, t0, m, n)
    d, e = reserve(broker, now=t0, limit=2)
    broker.request_cancel(m.id, 1.0, now=t0 + 1)
    broker.request_cancel(n.id, 1.0, now=t0 + 1)

    assert statuses(broker, [retried(d, delay=0), snoozed(e, delay=0)], now=t0 + 2) == ["ok", "ok"]

    assert info(broker, m.id, now=t0 + 3).state == "cancelled"
    assert info(broker, n.id, now=t0 + 3).state == "cancelled"
    assert reserve(broker, now=t0 + 100) == []


def test_a_cancelled_run_frees_its_concurrency_slot(broker, t0):
    slot = Rule(key="k", concurrency=1)
    a, b = (msgspec.structs.replace(make_message(), limits=(slot,)) for _ in range(2))
    enqueue(broker, t0, a, b)
    d = reserve_one(broker, now=t0)
    assert reserve(broker, now=t0) == []  # b waits for a's slot
    broker.request_cancel(d.id, 1.0, now=t0 + 1)

    assert statuses(broker, [cancelled(d)], now=t0 + 2) == ["ok"]

    assert [x.id for x in reserve(broker, now=t0 + 2)] == [b.id]


def test_wait_cancel_wakes_the_lease_holder(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    reserve_one(broker, now=t0, worker="holder")
    assert broker.wait_cancel("holder", 0.0) in (True, False)  # the first wait starts listening
    broker.wait_cancel("holder", 0.05)  # a wake-up left over from listening, if any

    woken: list[tuple[bool, float]] = []

    def waiter() -> None:
        began = time.monotonic()
        woken.append((broker.wait_cancel("holder", 10.0), time.monotonic() - began))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)  # the waiter blocks: a cancel afterwards must end its wait, not its timeout
    assert broker.request_cancel(m.id, 1.0) == "cancelling"
    thread.join(15)
    assert woken and woken[0][0] is True
    assert woken[0][1] < 5.0


# -- snooze ------------------------------------------------------------------------------------


def test_a_snooze_reschedules_without_counting_an_attempt(broker, t0):
    m = make_message(max_attempts=1)
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)

    assert statuses(broker, [snoozed(d, delay=30)], now=t0 + 1) == ["ok"]

    job = info(broker, m.id, now=t0 + 2)
    assert (job.state, job.attempt, job.run_at, job.errors) == ("scheduled", 0, t0 + 31, [])
    assert reserve(broker, now=t0 + 30) == []
    again = reserve_one(broker, now=t0 + 31)
    assert again.attempt == 1  # still its first (and only) attempt
    assert statuses(broker, [succeeded(again)], now=t0 + 32) == ["ok"]


def test_the_snooze_past_the_cap_buries_the_job(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    now = t0
    for _ in range(2):
        d = reserve_one(broker, now=now)
        assert statuses(broker, [snoozed(d, delay=1, max_snoozes=2)], now=now) == ["ok"]
        now += 1
    d = reserve_one(broker, now=now)

    assert statuses(broker, [snoozed(d, delay=1, max_snoozes=2)], now=now) == ["ok"]

    job = info(broker, m.id, now=now + 5)
    assert job.state == "dead"
    assert job.errors[-1]["type"] == "Snooze"
    assert broker.replay([m.id], now=now + 6) == 1
    d = reserve_one(broker, now=now + 6)  # a replay starts the count again
    assert statuses(broker, [snoozed(d, delay=1, max_snoozes=2)], now=now + 6) == ["ok"]
    assert info(broker, m.id, now=now + 6).state == "scheduled"


def test_a_snooze_frees_the_slot_and_closes_no_key(broker, t0):
    rule = Rule(key="k", concurrency=1, rate=1000, burst=10)
    a, b = (msgspec.structs.replace(make_message(), limits=(rule,)) for _ in range(2))
    enqueue(broker, t0, a, b)
    d = reserve_one(broker, now=t0)

    assert statuses(broker, [snoozed(d, delay=60)], now=t0 + 1) == ["ok"]

    assert [x.id for x in reserve(broker, now=t0 + 1)] == [b.id]  # the key is not closed


def test_a_snooze_is_fenced(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    first = reserve_one(broker, now=t0, lease=5)
    broker.reclaim(now=t0 + 10)
    reserve_one(broker, now=t0 + 10, worker="w2")

    assert statuses(broker, [snoozed(first)], now=t0 + 11) == ["lost"]
    assert info(broker, m.id, now=t0 + 11).state == "running"
