"""A property-based state machine over limits, run on every backend (docs/flow-control.md).

Hypothesis drives random sequences against one queue on a virtual clock: enqueue jobs of three
groups (keys shared between groups, rates with bursts, concurrency slots), reserve by two
workers, acknowledge (succeeded, retry, dead, throttled), release, a worker's crash followed by
reclaim once its leases expire, stale outcomes replayed by a zombie, run-time limits set and
cleared (on a key and on the whole queue), and the clock moving forward. The model does not
predict which job a claim takes (that is the fairness tests' business); it checks what the
limits guarantee, after every step:

* running jobs per key never exceed the key's concurrency as it was when each was claimed
  (a slot changed at run time does not evict running jobs, but no claim exceeds the new one);
* the claims of a key over every window of the clock stay within ``rate * window + burst``
  of the rule in force (rules only change through this machine; a change starts a new window);
* nothing is claimed from a key closed by a throttle before the throttle ends;
* a throttle does not count an attempt; a stale outcome frees no slot;
* progress: when some due job's keys all allow a start, a claim of 1 takes a job.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conveyor.brokers import Broker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Delivery, Message, Outcome, Rule

from .helpers import WEIGHTS

T0 = 1_700_000_000.0
WORKERS = ("w1", "w2")
#: The machine's groups and their declared rules: "shared" is in every group.
DECLARED = {
    "shared": Rule(key="shared", rate=4.0, burst=3),
    "a": Rule(key="a", concurrency=2),
    "b": Rule(key="b", rate=2.0, burst=1, concurrency=1),
}
GROUPS = {"ga": ("shared", "a"), "gb": ("shared", "b"), "plain": ()}
OVERRIDES = [
    Rule(key="a", concurrency=1),
    Rule(key="b", rate=8.0, burst=2),
    Rule(key="shared", rate=1.0, burst=1),
    Rule(key="", concurrency=2),
    Rule(key="", rate=3.0, burst=2),
]

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    report_multiple_bugs=False,
)


@dataclass
class Job:
    id: str
    group: str
    stored: str = "pending"
    run_at: float = 0.0
    attempt: int = 0
    token: int | None = None
    lease_until: float | None = None
    #: The keys whose slot the running job holds (concurrency in force when it was claimed).
    holds: tuple[str, ...] = ()


@dataclass
class Bucket:
    """Claims of one key since its rule last changed, to check the rate bound."""

    since: float
    starts: list[float] = field(default_factory=list)


class LimitsMachine(RuleBasedStateMachine):
    admin: ClassVar[Broker]
    handles: ClassVar[dict[str, Broker]]
    numbers: ClassVar[Iterator[int]]

    def __init__(self) -> None:
        super().__init__()
        self.queue = f"lm{next(self.numbers)}"
        self.now = T0
        self.jobs: dict[str, Job] = {}
        self.overrides: dict[str, Rule] = {}
        self.closed: dict[str, float] = {}
        self.buckets: dict[str, Bucket] = {}
        self.held: dict[str, list[Delivery]] = {w: [] for w in WORKERS}
        self.stale: list[Delivery] = []
        self.crashed: set[str] = set()

    # -- the model's view of the rules ---------------------------------------------------------

    def rule_of(self, key: str) -> Rule | None:
        return self.overrides.get(key) or DECLARED.get(key)

    def keys_of(self, job: Job) -> tuple[str, ...]:
        return (*GROUPS[job.group], *([""] if "" in self.overrides else []))

    def running(self, key: str) -> int:
        return sum(1 for j in self.jobs.values() if j.stored == "running" and key in j.holds)

    def allows(self, key: str) -> bool:
        r = self.rule_of(key)
        if self.closed.get(key, 0.0) > self.now:
            return False
        if r is None:
            return True
        if r.concurrency and self.running(key) >= r.concurrency:
            return False
        if r.rate:
            b = self.buckets.get(key)
            starts = [] if b is None else b.starts
            # Would one more start now keep every window ending now within the bound?
            for i, s in enumerate(starts):
                if len(starts) - i + 1 > r.rate * (self.now - s) + r.burst + 1e-6:
                    return False
        return True

    def rule_changed(self, key: str) -> None:
        # A new rule starts a new window for the rate bound (the bucket's saved state stays).
        self.buckets[key] = Bucket(since=self.now)

    # -- operations ----------------------------------------------------------------------------

    @rule(
        group=st.sampled_from(sorted(GROUPS)), count=st.integers(1, 4), delay=st.sampled_from([0.0, 0.0, 1.0])
    )
    def enqueue(self, group: str, count: int, delay: float) -> None:
        rules = tuple(DECLARED[k] for k in GROUPS[group])
        messages = [
            Message(id=new_id(), task="lm", queue=self.queue, priority=1, payload=b"[[],{}]", delay=delay,
                    max_attempts=3, limits=rules)
            for _ in range(count)
        ]  # fmt: skip
        self.admin.enqueue(messages, now=self.now)
        for m in messages:
            self.jobs[m.id] = Job(m.id, group, run_at=self.now + delay)

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 6), lease=st.sampled_from([2.0, 5.0]))
    def reserve(self, worker: str, limit: int, lease: float) -> None:
        if worker in self.crashed:
            return
        could = self.could_start()
        got = self.handles[worker].reserve(
            [self.queue], limit, lease, worker, Fairness(WEIGHTS), now=self.now
        )
        assert len(got) <= limit
        if could:
            assert got, f"nothing claimed though {could} may start"
        for d in got:
            job = self.jobs[d.id]
            assert job.stored == "pending" and job.run_at <= self.now + 1e-9, (job, d)
            keys = self.keys_of(job)
            for key in keys:
                assert self.closed.get(key, 0.0) <= self.now, f"claimed {d.id} from closed key {key!r}"
                assert self.allows(key), f"claimed {d.id} though {key!r} allows nothing now"
            job.stored, job.token, job.attempt = "running", d.token, d.attempt
            job.lease_until = self.now + lease
            job.holds = tuple(k for k in keys if (r := self.rule_of(k)) is not None and r.concurrency)
            for key in keys:
                self.buckets.setdefault(key, Bucket(since=self.now)).starts.append(self.now)
            self.held[worker].append(d)

    def could_start(self) -> list[str]:
        """Due pending jobs whose keys all allow a start now."""
        return [
            j.id
            for j in self.jobs.values()
            if j.stored == "pending" and j.run_at <= self.now and all(self.allows(k) for k in self.keys_of(j))
        ]

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data(), kind=st.sampled_from(["succeeded", "retry", "dead", "throttled"]))
    def ack(self, data: st.DataObject, kind: str) -> None:
        worker = data.draw(st.sampled_from([w for w in WORKERS if self.held[w]]))
        d = data.draw(st.sampled_from(self.held[worker]))
        self.held[worker].remove(d)
        delay = 1.0
        error = {
            "attempt": d.attempt,
            "type": "E",
            "message": "",
            "traceback": None,
            "worker": worker,
            "at": 0,
        }
        outcome = Outcome(d.id, d.token, kind, delay=delay, error=None if kind == "succeeded" else error,  # type: ignore[arg-type]
                          result=b"null" if kind == "succeeded" else None)  # fmt: skip
        (status,) = self.handles[worker].ack([outcome], now=self.now)
        job = self.jobs[d.id]
        if not (job.stored == "running" and job.token == d.token):
            assert status.status == "lost"
            return
        assert status.status == "ok"
        self.stale.append(d)
        job.holds = ()
        if kind in ("retry", "throttled"):
            job.stored, job.run_at = "pending", self.now + delay
            if kind == "throttled":
                job.attempt -= 1
                for key in GROUPS[job.group]:
                    self.closed[key] = max(self.closed.get(key, 0.0), self.now + delay)
        else:
            job.stored = kind

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from([w for w in WORKERS if self.held[w]]))
        d = data.draw(st.sampled_from(self.held[worker]))
        self.held[worker].remove(d)
        job = self.jobs[d.id]
        freed = self.handles[worker].release([(d.id, d.token)])
        assert freed == (1 if job.stored == "running" and job.token == d.token else 0)
        if freed:
            job.stored, job.holds = "pending", ()
            job.attempt -= 1
            self.stale.append(d)

    @precondition(lambda self: bool(self.stale))
    @rule(data=st.data())
    def zombie(self, data: st.DataObject) -> None:
        """A stale outcome: refused, and it frees nothing."""
        d = data.draw(st.sampled_from(self.stale))
        job = self.jobs[d.id]
        if job.stored == "running" and job.token == d.token:
            return
        outcome = Outcome(d.id, d.token, "succeeded", result=b"null")
        assert [s.status for s in self.admin.ack([outcome], now=self.now)] == ["lost"]

    @rule(worker=st.sampled_from(WORKERS))
    def crash(self, worker: str) -> None:
        self.stale += self.held[worker]
        self.held[worker] = []

    @rule(seconds=st.sampled_from([0.1, 0.25, 0.5, 1.0, 3.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def reclaim(self) -> None:
        got = self.admin.reclaim(now=self.now)  # store-wide: earlier examples' queues too
        requeued, dead = set(got.requeued) & self.jobs.keys(), set(got.dead) & self.jobs.keys()
        expected = {
            j.id for j in self.jobs.values() if j.stored == "running" and (j.lease_until or 0) < self.now
        }
        assert requeued | dead == expected
        for job_id in expected:
            job = self.jobs[job_id]
            job.holds = ()
            job.stored = "dead" if job_id in dead else "pending"

    @rule(override=st.sampled_from(OVERRIDES))
    def set_limit(self, override: Rule) -> None:
        self.admin.set_limit(self.queue, override)
        self.overrides[override.key] = override
        self.rule_changed(override.key)

    @rule(key=st.sampled_from(["a", "b", "shared", ""]))
    def clear_limit(self, key: str) -> None:
        assert self.admin.clear_limit(self.queue, key) is (key in self.overrides)
        if self.overrides.pop(key, None) is not None:
            self.rule_changed(key)

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def attempts_and_states_agree(self) -> None:
        for info in self.admin.jobs(queue=self.queue, limit=1000, now=self.now):
            job = self.jobs[info.id]
            stored = "pending" if info.state in ("ready", "scheduled") else info.state
            assert (stored, info.attempt) == (job.stored, job.attempt), (info, job)

    @invariant()
    def slots_are_counted(self) -> None:
        listed = {i.key: i for i in self.admin.limits(self.queue, now=self.now)}
        for key in ("a", "b", ""):
            want = self.running(key)
            assert (listed[key].running if key in listed else 0) == want, (key, listed.get(key), want)


def test_limits_state_machine(backend, store_url, open_handle) -> None:
    numbers = itertools.count()

    class Machine(LimitsMachine):
        admin = open_handle()
        handles = {w: open_handle() for w in WORKERS}

    Machine.numbers = numbers
    run_state_machine_as_test(Machine, settings=SETTINGS)
