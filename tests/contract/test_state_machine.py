"""A property-based state machine over the broker contract, run on every backend.

Hypothesis drives random sequences of broker operations against one store on a virtual clock
that only moves forward: enqueue (batches with priorities, delays or absolute due times,
idempotency keys from a small pool so duplicates happen, max_attempts 1-3, and batches whose
key clashes with a different payload), reserve by two workers (random limit and lease), ack
(succeeded / retry with a delay / dead / snoozed with a cap / cancelled), extend, release, a
worker crash (its deliveries are never acked by it, but a "zombie" may replay them later with
their stale tokens), advancing the clock, reclaim, cancel and request_cancel (a running job's
request holds for the run it was made for; a retry or snooze of that run ends it cancelled). A model of every job predicts each operation's exact answer,
and after every step the machine checks that:

* every job is in exactly one state, the one the model says, with the model's attempt, due
  time, error count, lease expiry and worker, and result: the ``jobs`` listing of the queue
  (each job listed once) every step, and ``get`` of the jobs the step acted on plus one more
  in turn. Pending jobs are reported ``scheduled`` or ``ready`` by their due time vs ``now``;
* a job has at most one live lease: every claim hands out a token never used before for the
  job, only the newest token of a running job is accepted, and ack, extend or release with a
  stale token changes nothing (``lost``, reported lost, or not counted);
* nothing is reserved before it is due, each reservation takes exactly ``min(limit, due)``
  tasks split across levels as the worker's ``Fairness`` decides, oldest due first;
* attempts never exceed max_attempts (the worker turns a retry of the last attempt into
  ``dead``, as the executor does), and a lease reclaimed at the last attempt makes the job
  dead while an earlier one makes it pending again, each with a WorkerLost error;
* an enqueue with a key already held in the queue returns the holder's id with
  ``created=False`` (also for a key repeated within one batch), and a key clash stores
  nothing of its batch;
* ``stats`` counts per state and priority, and the oldest ready age, agree with the model.

Each Hypothesis example uses a queue of its own in the test's store, so it starts empty.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conveyor.brokers import Broker
from conveyor.errors import KeyConflict
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Delivery, JobInfo, Message, Outcome

from .helpers import WEIGHTS

#: The virtual clock's start; every time in the machine is exact in binary floating point.
T0 = 1_700_000_000.0
TASK = "machine"
KEYS = ("k0", "k1", "k2")
WORKERS = ("w1", "w2")
LEASES = (2.0, 5.0, 10.0)
LEVELS = len(WEIGHTS)

SETTINGS = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # Shrink one failure to a short sequence, without the slow "explain" phase: every replay
    # of a sequence runs the invariants against the store.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    report_multiple_bugs=False,
)


def close(a: float | None, b: float | None) -> bool:
    """Times agree (None only with None)."""
    if a is None or b is None:
        return a is b
    return abs(a - b) < 1e-6


def payload_of(key: str | None) -> bytes:
    """The payload of a message: equal for equal keys, so a duplicate is a true duplicate."""
    return b"[[],{}]" if key is None else f'[["{key}"],{{}}]'.encode()


@dataclass
class Job:
    """What the model expects of one stored job."""

    id: str
    priority: int
    max_attempts: int
    run_at: float
    enqueued_at: float
    #: Enqueue order, the tie-break between jobs due at the same time.
    seq: int
    key: str | None
    #: The stored state: pending (reported scheduled or ready), running, succeeded, dead, cancelled.
    stored: str = "pending"
    attempt: int = 0
    #: Token of the current (or last) claim, and every token handed out for the job.
    token: int | None = None
    tokens: tuple[int, ...] = ()
    lease_until: float | None = None
    worker: str | None = None
    errors: int = 0
    worker_lost: int = 0
    result: bytes | None = None
    #: The token of the run a cancel request was stored for (docs/job-control.md), and snoozes.
    cancel_token: int | None = None
    snoozes: int = 0

    def cancelling(self) -> bool:
        return self.stored == "running" and self.cancel_token == self.token

    def state(self, now: float) -> str:
        if self.stored == "pending":
            return "ready" if self.run_at <= now else "scheduled"
        return self.stored

    def holds(self, d: Delivery) -> bool:
        """Whether ``d`` is the job's live lease (its token is current and the job running)."""
        return self.stored == "running" and self.token == d.token


# Message specs: (priority, timing, key, max_attempts); timing is ("delay", s) or ("run_at", offset).
TIMINGS = st.one_of(
    st.tuples(st.just("delay"), st.sampled_from([0.0, 0.0, 1.0, 5.0, 10.0])),
    st.tuples(st.just("run_at"), st.sampled_from([-5.0, 0.0, 3.0, 10.0])),
)
SPECS = st.tuples(
    st.integers(0, LEVELS - 1),
    TIMINGS,
    st.one_of(st.none(), st.sampled_from(KEYS)),
    st.integers(1, 3),
)


class BrokerMachine(RuleBasedStateMachine):
    """The machine; ``test_broker_state_machine`` subclasses it with the test's broker handles."""

    #: Handle for producers, reclaim and reads; one handle per worker (as separate processes).
    admin: ClassVar[Broker]
    handles: ClassVar[dict[str, Broker]]
    numbers: ClassVar[Iterator[int]]

    def __init__(self) -> None:
        super().__init__()
        self.queue = f"sm{next(self.numbers)}"
        self.now = T0
        self.jobs: dict[str, Job] = {}
        self.by_key: dict[str, str] = {}
        self.seq = itertools.count()
        self.fairness = {w: Fairness(WEIGHTS) for w in WORKERS}
        #: Deliveries each worker holds (has not acked, released or forgotten in a crash).
        self.held: dict[str, list[Delivery]] = {w: [] for w in WORKERS}
        #: Deliveries no worker holds any more, kept so a zombie can replay them later.
        self.past: list[tuple[str, Delivery]] = []
        #: Jobs the last step acted on: ``get`` checks them (and one more, in turn) after it.
        self.touched: set[str] = set()
        self.steps = 0
        #: The pauses stored: the queue's, its task's (every job here is of TASK). Either makes
        #: reservations take nothing (see docs/flow-control.md); the task's parks due jobs.
        self.paused = {"queue": False, "task": False}

    # -- helpers -----------------------------------------------------------------------------

    def message(self, spec: tuple[int, tuple[str, float], str | None, int]) -> Message:
        priority, (timing, amount), key, max_attempts = spec
        return Message(
            id=new_id(),
            task=TASK,
            queue=self.queue,
            priority=priority,
            payload=payload_of(key),
            delay=amount if timing == "delay" else 0.0,
            run_at=self.now + amount if timing == "run_at" else None,
            key=key,
            max_attempts=max_attempts,
        )

    def retire(self, worker: str, ds: list[Delivery]) -> None:
        """The worker lets go of ``ds``; they stay around for zombies."""
        for d in ds:
            if d in self.held[worker]:
                self.held[worker].remove(d)
                self.past.append((worker, d))

    def pick_leases(self, data: st.DataObject) -> tuple[str, list[Delivery]]:
        """A worker and up to three of its deliveries (held or past), at most one per job: a
        worker tracks its leases by job id, and ``extend`` answers with job ids."""
        worker = data.draw(st.sampled_from(WORKERS))
        mine = [d for w, d in self.all_deliveries() if w == worker]
        if not mine:
            return worker, []
        return worker, data.draw(
            st.lists(st.sampled_from(mine), min_size=1, max_size=3, unique_by=lambda d: d.id)
        )

    def all_deliveries(self) -> list[tuple[str, Delivery]]:
        return [(w, d) for w in WORKERS for d in self.held[w]] + self.past

    def due(self, level: int) -> list[Job]:
        """The pending jobs of a level that are due, oldest first."""
        ready = [
            j
            for j in self.jobs.values()
            if j.priority == level and j.stored == "pending" and j.run_at <= self.now
        ]
        return sorted(ready, key=lambda j: (j.run_at, j.seq))

    # -- rules -------------------------------------------------------------------------------

    @initialize(specs=st.lists(SPECS, min_size=2, max_size=6))
    def start(self, specs: list[tuple[int, tuple[str, float], str | None, int]]) -> None:
        """Begin with a few jobs so that the first reservations find work."""
        self.enqueue(specs)

    @rule(specs=st.lists(SPECS, min_size=1, max_size=3))
    def enqueue(self, specs: list[tuple[int, tuple[str, float], str | None, int]]) -> None:
        messages = [self.message(s) for s in specs]
        expected: list[tuple[str, bool]] = []
        new: dict[str, Message] = {}
        for m in messages:
            holder = self.by_key.get(m.key) if m.key is not None else None
            if holder is None and m.key is not None and m.key in new:
                holder = new[m.key].id
            if holder is not None:
                expected.append((holder, False))
                event("enqueue: duplicate key")
            else:
                expected.append((m.id, True))
                if m.key is not None:
                    new[m.key] = m

        out = self.admin.enqueue(messages, now=self.now)

        assert [(e.id, e.created) for e in out] == expected
        self.touched.update(e.id for e in out)
        for m, (_, created) in zip(messages, expected, strict=True):
            if created:
                due = m.run_at if m.run_at is not None else self.now + m.delay
                self.jobs[m.id] = Job(m.id, m.priority, m.max_attempts, due, self.now, next(self.seq), m.key)
                if m.key is not None:
                    self.by_key[m.key] = m.id

    @precondition(lambda self: bool(self.by_key))
    @rule(data=st.data())
    def enqueue_key_conflict(self, data: st.DataObject) -> None:
        """A batch with a held key but another payload raises KeyConflict and stores nothing."""
        key = data.draw(st.sampled_from(sorted(self.by_key)))
        fresh = self.message((1, ("delay", 0.0), None, 1))
        clash = Message(new_id(), TASK, self.queue, 1, b'[["other"],{}]', key=key, max_attempts=1)
        with pytest.raises(KeyConflict):
            self.admin.enqueue([fresh, clash], now=self.now)
        assert self.admin.get(fresh.id, now=self.now) is None
        assert self.admin.get(clash.id, now=self.now) is None

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 4), lease=st.sampled_from(LEASES))
    def reserve(self, worker: str, limit: int, lease: float) -> None:
        fairness = self.fairness[worker]
        predicted = copy.deepcopy(fairness)
        held = any(self.paused.values())
        due = [[] if held else self.due(level) for level in range(LEVELS)]
        take = predicted.split([min(len(d), limit) for d in due], limit)
        expected = {j.id for level, n in enumerate(take) for j in due[level][:n]}

        got = self.handles[worker].reserve([self.queue], limit, lease, worker, fairness, now=self.now)

        ids = [d.id for d in got]
        assert len(ids) == len(set(ids)), f"a job delivered twice in one reservation: {ids}"
        assert set(ids) == expected, (
            f"reserved {sorted(ids)}, expected {sorted(expected)} (split {take}, due {[len(d) for d in due]})"
        )
        assert fairness.current == predicted.current
        for d in sorted(got, key=lambda d: self.jobs[d.id].seq):
            job = self.jobs[d.id]
            assert d.run_at <= self.now, f"{d.id} reserved at {self.now} before due at {d.run_at}"
            assert close(d.run_at, job.run_at)
            assert close(d.enqueued_at, job.enqueued_at)
            assert (d.task, d.queue, d.priority, d.key, d.payload) == (
                TASK,
                self.queue,
                job.priority,
                job.key,
                payload_of(job.key),
            )
            assert (d.attempt, d.max_attempts) == (job.attempt + 1, job.max_attempts)
            assert d.token not in job.tokens, f"token {d.token} of {d.id} handed out twice"
            job.stored, job.attempt, job.worker = "running", d.attempt, worker
            job.token, job.tokens, job.lease_until = d.token, (*job.tokens, d.token), self.now + lease
            self.held[worker].append(d)
            self.touched.add(d.id)
        event(f"reserve: {len(got)} of limit {limit}")

    @rule(scope=st.sampled_from(["queue", "task"]))
    def pause(self, scope: str) -> None:
        """Pause the queue or its task (again, maybe): reservations take nothing, everything
        else goes on."""
        self.admin.pause(self.queue, TASK if scope == "task" else None)
        self.paused[scope] = True

    @precondition(lambda self: any(self.paused.values()))
    @rule(scope=st.sampled_from(["queue", "task"]))
    def resume(self, scope: str) -> None:
        self.admin.resume(self.queue, TASK if scope == "task" else None)
        self.paused[scope] = False

    def ack_one(self, worker: str, d: Delivery, kind: str, delay: float, cap: int = 1) -> None:
        job = self.jobs[d.id]
        if kind == "retry" and d.attempt >= d.max_attempts:
            kind = "dead"  # the worker's retry policy: the last attempt goes to the dead letters
        error = {"attempt": d.attempt, "type": "ValueError", "message": "boom", "traceback": None}
        result = f'"{d.id}:{d.token}"'.encode() if kind == "succeeded" else None
        outcome = Outcome(
            d.id,
            d.token,
            kind,  # type: ignore[arg-type]
            result=result,
            delay=delay if kind in ("retry", "snoozed") else 0.0,
            error=None if kind == "succeeded" else error,
            max_snoozes=cap,
        )
        live = job.holds(d)
        self.touched.add(d.id)

        (status,) = self.handles[worker].ack([outcome], now=self.now)

        assert status.status == ("ok" if live else "lost"), (d, job, status)
        event(f"ack {kind}: {status.status}")
        if not live:
            return
        job.lease_until = None
        marked = job.cancel_token == d.token
        if kind == "cancelled" or (kind in ("retry", "snoozed") and marked):
            job.stored, job.errors = "cancelled", job.errors + (kind != "snoozed")
        elif kind == "snoozed" and job.snoozes >= cap:
            job.stored, job.errors = "dead", job.errors + 1
        elif kind == "snoozed":
            job.stored, job.run_at, job.worker = "pending", self.now + delay, None
            job.attempt, job.snoozes = job.attempt - 1, job.snoozes + 1
        elif kind == "succeeded":
            job.stored, job.result = "succeeded", result
        elif kind == "retry":
            job.stored, job.run_at, job.worker, job.errors = "pending", self.now + delay, None, job.errors + 1
        else:
            job.stored, job.errors = "dead", job.errors + 1

    @precondition(lambda self: any(self.held.values()))
    @rule(
        data=st.data(),
        kind=st.sampled_from(["succeeded", "retry", "dead", "snoozed", "cancelled"]),
        delay=st.sampled_from([0.0, 2.0, 10.0]),
        cap=st.sampled_from([1, 2]),
    )
    def ack(self, data: st.DataObject, kind: str, delay: float, cap: int) -> None:
        """A worker acks a delivery it holds (its lease may have been lost meanwhile)."""
        worker = data.draw(st.sampled_from([w for w in WORKERS if self.held[w]]))
        d = data.draw(st.sampled_from(self.held[worker]))
        self.ack_one(worker, d, kind, delay, cap)
        self.retire(worker, [d])

    @precondition(lambda self: bool(self.past))
    @rule(
        data=st.data(),
        kind=st.sampled_from(["succeeded", "retry", "dead"]),
        delay=st.sampled_from([0.0, 2.0, 10.0]),
    )
    def zombie_ack(self, data: st.DataObject, kind: str, delay: float) -> None:
        """A delivery acked, released or forgotten before is acked (again), mostly with a stale token."""
        worker, d = data.draw(st.sampled_from(self.past))
        self.ack_one(worker, d, kind, delay)

    @precondition(lambda self: bool(self.all_deliveries()))
    @rule(data=st.data(), lease=st.sampled_from(LEASES))
    def extend(self, data: st.DataObject, lease: float) -> None:
        """A heartbeat of a worker's held deliveries, or of old ones (a zombie's)."""
        worker, chosen = self.pick_leases(data)
        if not chosen:
            return
        expected_lost = [d.id for d in chosen if not self.jobs[d.id].holds(d)]
        self.touched.update(d.id for d in chosen)

        lost = self.handles[worker].extend([(d.id, d.token) for d in chosen], lease, now=self.now)
        marked = self.handles[worker].cancelling([(d.id, d.token) for d in chosen])

        assert sorted(lost) == sorted(expected_lost), (chosen, lost)
        expected_marked = {d.id for d in chosen if self.jobs[d.id].holds(d) and self.jobs[d.id].cancelling()}
        assert set(marked) == expected_marked, (chosen, marked)
        event(f"extend: {len(lost)} of {len(chosen)} lost")
        for d in chosen:
            job = self.jobs[d.id]
            if job.holds(d):
                job.lease_until = self.now + lease

    @precondition(lambda self: bool(self.all_deliveries()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """A worker returns deliveries unstarted (some may be stale, or a zombie's)."""
        worker, chosen = self.pick_leases(data)
        if not chosen:
            return
        live = [d for d in chosen if self.jobs[d.id].holds(d)]
        self.touched.update(d.id for d in chosen)

        n = self.handles[worker].release([(d.id, d.token) for d in chosen])

        assert n == len(live), (chosen, n)
        event(f"release: {len(chosen) - n} of {len(chosen)} stale")
        for d in live:
            job = self.jobs[d.id]
            job.stored, job.attempt, job.lease_until, job.worker = "pending", job.attempt - 1, None, None
        self.retire(worker, chosen)

    @precondition(lambda self: any(self.held.values()))
    @rule(worker=st.sampled_from(WORKERS))
    def crash(self, worker: str) -> None:
        """The worker dies: it never acks, extends or releases what it holds."""
        self.retire(worker, list(self.held[worker]))

    # Hypothesis pads examples with the rule of fewest arguments (first by name) and its simplest
    # arguments: that is ``advance`` by one second, so padding lets time pass.
    @rule(dt=st.sampled_from([1.0, 0.5, 2.0, 5.0, 10.0, 30.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(after=st.sampled_from([0.0, 1.0, 5.0]))
    def reclaim(self, after: float) -> None:
        """The reclaimer runs, ``after`` seconds from now."""
        self.now += after
        expired = [j for j in self.jobs.values() if j.stored == "running" and j.lease_until < self.now]  # type: ignore[operator]
        expected_dead = {j.id for j in expired if j.attempt >= j.max_attempts}
        expected_requeued = {j.id for j in expired} - expected_dead

        got = self.admin.reclaim(now=self.now)

        # The store is shared with earlier examples: look only at this example's jobs.
        assert {i for i in got.requeued if i in self.jobs} == expected_requeued
        assert {i for i in got.dead if i in self.jobs} == expected_dead
        event(f"reclaim: {len(expected_requeued)} requeued, {len(expected_dead)} dead")
        for j in expired:
            self.touched.add(j.id)
            j.stored = "dead" if j.id in expected_dead else "pending"
            j.lease_until = None
            j.errors += 1
            j.worker_lost += 1

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        # In enqueue order: ids order randomly within a millisecond, and draws must be replayable.
        job_id = data.draw(st.sampled_from(list(self.jobs)) if self.jobs else st.just(new_id()))
        job = self.jobs.get(job_id)
        expected = job is not None and job.stored == "pending"
        self.touched.add(job_id)

        assert self.admin.cancel(job_id, now=self.now) is expected
        event(f"cancel: {expected}")
        if job is not None and expected:
            job.stored = "cancelled"

    @rule(data=st.data(), grace=st.sampled_from([0.0, 2.5]))
    def request_cancel(self, data: st.DataObject, grace: float) -> None:
        job_id = data.draw(st.sampled_from(list(self.jobs)) if self.jobs else st.just(new_id()))
        job = self.jobs.get(job_id)
        self.touched.add(job_id)
        if job is None:
            expected = "missing"
        elif job.stored == "pending":
            expected, job.stored = "cancelled", "cancelled"
        elif job.stored == "running":
            expected, job.cancel_token = "cancelling", job.token
        else:
            expected = "finished"

        assert self.admin.request_cancel(job_id, grace, now=self.now) == expected
        event(f"request_cancel: {expected}")

    # -- invariants --------------------------------------------------------------------------

    def check(self, got: JobInfo, job: Job, read: bool = False) -> None:
        """One job as the store reports it agrees with the model."""
        want = job.state(self.now)
        assert got.state == want, f"{job.id}: the store says {got.state}, the model {want} ({job})"
        assert (got.queue, got.task, got.priority, got.key) == (self.queue, TASK, job.priority, job.key)
        assert got.payload == payload_of(job.key)
        assert (got.attempt, got.max_attempts) == (job.attempt, job.max_attempts), (got, job)
        assert got.attempt <= got.max_attempts, got
        assert close(got.run_at, job.run_at), (got, job)
        assert close(got.enqueued_at, job.enqueued_at), (got, job)
        assert len(got.errors) == job.errors, (got, job)
        assert sum(e.get("type") == "WorkerLost" for e in got.errors) == job.worker_lost, (got, job)
        if read:  # ``get`` reports a cancel request (listings need not)
            assert got.cancelling == job.cancelling(), (got, job)
        if job.stored == "running":
            assert close(got.lease_until, job.lease_until), (got, job)
            assert got.worker == job.worker, (got, job)
        else:
            assert got.lease_until is None, (got, job)
        if job.stored == "succeeded":
            assert got.result == job.result, (got, job)

    @invariant()
    def listing_matches_the_model(self) -> None:
        """Every job is listed once, in the state and with the fields the model says."""
        listed = self.admin.jobs(queue=self.queue, limit=1000, now=self.now)
        ids = [j.id for j in listed]
        assert len(ids) == len(set(ids)), f"a job listed twice: {ids}"
        assert set(ids) == set(self.jobs), (sorted(ids), sorted(self.jobs))
        for got in listed:
            self.check(got, self.jobs[got.id])

    @invariant()
    def get_matches_the_model(self) -> None:
        """``get`` of the jobs the step acted on, and of one more in turn, agrees with the model.

        (Not every job every step: on Redis a ``get`` looks in every queue of the store, and
        each example adds one.)
        """
        ids = set(self.touched) & set(self.jobs)
        if self.jobs:
            ids.add(list(self.jobs)[self.steps % len(self.jobs)])
        self.steps += 1
        self.touched.clear()
        for job_id in sorted(ids):
            got = self.admin.get(job_id, now=self.now)
            assert got is not None, job_id
            self.check(got, self.jobs[job_id], read=True)

    @invariant()
    def stats_match_the_model(self) -> None:
        """Counts per reported state and priority, and the oldest ready age, as the model says."""
        want: dict[str, dict[int, int]] = {}
        for job in self.jobs.values():
            per = want.setdefault(job.state(self.now), {})
            per[job.priority] = per.get(job.priority, 0) + 1
        (qs,) = self.admin.stats([self.queue], now=self.now)
        assert qs.queue == self.queue
        got = {state: {p: n for p, n in per.items() if n} for state, per in qs.counts.items()}
        assert {state: per for state, per in got.items() if per} == want
        ready = [j.run_at for j in self.jobs.values() if j.state(self.now) == "ready"]
        if ready:
            assert qs.oldest_ready_age is not None
            assert close(qs.oldest_ready_age, self.now - min(ready)), (qs, ready)
        else:
            assert qs.oldest_ready_age is None, qs

    @invariant()
    def at_most_one_live_lease_per_job(self) -> None:
        """The model's bookkeeping: each running job's lease is held by exactly one delivery.

        (The store's side is checked by its answers to ack, extend and release with every
        token, and by the tokens ``reserve`` hands out.)
        """
        live: dict[str, int] = {}
        for _, d in self.all_deliveries():
            if self.jobs[d.id].holds(d):
                live[d.id] = live.get(d.id, 0) + 1
        assert all(n == 1 for n in live.values()), live
        running = {j.id for j in self.jobs.values() if j.stored == "running"}
        assert set(live) == running, "every running job's lease was handed to some worker"

    def teardown(self) -> None:
        """Give back this example's live leases so later examples' reclaims never meet them."""
        leases = [
            (j.id, j.token) for j in self.jobs.values() if j.stored == "running" and j.token is not None
        ]
        if leases:
            self.admin.release(leases)


# Passing runs take seconds; shrinking a failure replays many sequences against the store,
# which can take minutes on a networked store, so the suite's default timeout is raised here.
@pytest.mark.timeout(600)
def test_broker_state_machine(open_handle: Any) -> None:
    """Random operation sequences agree with the model on this backend."""
    admin = open_handle()
    machine = type(
        "Machine",
        (BrokerMachine,),
        {"admin": admin, "handles": {w: open_handle() for w in WORKERS}, "numbers": itertools.count()},
    )
    run_state_machine_as_test(machine, settings=SETTINGS)
