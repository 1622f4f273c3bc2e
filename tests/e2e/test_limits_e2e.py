"""Limits through real worker processes on every backend (docs/flow-control.md): a global rate
across three workers, a per-key concurrency that survives a SIGKILL, and RateLimited."""

from __future__ import annotations

import itertools
import signal
from collections import defaultdict

import pytest
from e2e_app import call_api, per_account, rated, tenant_job
from harness import Cluster, wait_for

pytestmark = pytest.mark.slow

FAST = {"lease": 1.0, "heartbeat": 0.2, "reclaim_interval": 0.2}


def _finished(cluster: Cluster, queue: str) -> int:
    (stats,) = cluster.app.broker.stats([queue])
    return stats.total("succeeded") + stats.total("dead")


def test_three_workers_share_one_rate(cluster: Cluster) -> None:
    rate, burst, queued = 200.0, 20, 1000
    cluster.app.enqueue_many(rated.message(n) for n in range(queued))

    for _ in range(3):
        cluster.worker(queues=["rated"], concurrency=8)
    wait_for(lambda: _finished(cluster, "rated") == queued, timeout=60, what="the rated jobs to finish")

    starts = sorted(j.started_at or 0.0 for j in cluster.app.broker.jobs(queue="rated", limit=queued))
    # Over every window of one second: at most rate + burst starts.
    j = 0
    for i, first in enumerate(starts):
        while j < len(starts) and starts[j] < first + 1.0:
            j += 1
        assert j - i <= rate + burst, f"{j - i} starts in the second from {first}"
    # And the rate is used: the ideal is (queued - burst) / rate after the first start.
    ideal = (queued - burst) / rate
    took = starts[-1] - starts[0]
    assert ideal * 0.95 <= took <= ideal * 1.05, f"took {took:.2f} s, ideal {ideal:.2f} s"


def test_a_key_never_runs_more_than_its_concurrency_when_a_worker_is_killed(cluster: Cluster) -> None:
    cluster.env["E2E_SPANS"] = str(cluster.logs / "spans.log")
    jobs = [per_account.message(account, 0.15) for _ in range(12) for account in ("a", "b")]
    cluster.app.enqueue_many(jobs)
    victim = cluster.worker(queues=["slots"], concurrency=4, **FAST)
    for _ in range(2):
        cluster.worker(queues=["slots"], concurrency=4, **FAST)
    wait_for((cluster.logs / "spans.log").exists, what="a first job to finish")
    victim.send_signal(signal.SIGKILL)

    wait_for(lambda: _finished(cluster, "slots") == len(jobs), timeout=60, what="every job to finish")

    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in (cluster.logs / "spans.log").read_text().splitlines():
        account, start, end = line.split()
        spans[account].append((float(start), float(end)))
    for account, runs in spans.items():
        events = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs])
        running = peak = 0
        for _, step in events:
            running += step
            peak = max(peak, running)
        assert peak <= 2, f"{account} had {peak} running at once"
    assert {j.state for j in cluster.app.broker.jobs(queue="slots", limit=100)} == {"succeeded"}


def test_rate_limited_gives_the_attempt_back_and_ends_after_max_throttles(cluster: Cluster) -> None:
    cluster.env["E2E_SPANS"] = str(cluster.logs / "spans.log")
    once = call_api.enqueue("stripe", 1, "once")
    always = call_api.enqueue("github", 2, "always")
    cluster.worker(queues=["throttled"], concurrency=2)

    assert once.result(timeout=30) == 1
    wait_for(lambda: always.status() == "dead", timeout=30, what="the always-throttled job to be buried")

    done = once.info()
    assert done.attempt == 1  # the throttled execution was not counted
    assert [e["type"] for e in done.errors] == ["RateLimited"]
    dead = always.info()
    assert [e["type"] for e in dead.errors] == ["RateLimited"] * 4  # 3 throttles, then buried
    assert "max_throttles 3" in dead.errors[-1]["message"]
    # Each throttle closed the key for 0.3 s: the next execution came no sooner.
    times = [float(line.split()[2]) for line in (cluster.logs / "spans.log").read_text().splitlines()
             if line.startswith("github")]  # fmt: skip
    assert all(b - a >= 0.3 for a, b in itertools.pairwise(times)), times


def test_a_small_tenant_is_not_stuck_behind_a_large_one(cluster: Cluster) -> None:
    workers, big, small = 2, 3000, 20
    for start in range(0, big, 500):
        cluster.app.enqueue_many(tenant_job.message("a") for _ in range(start, start + 500))
    for _ in range(workers):
        cluster.worker(queues=["tenants"], concurrency=8)
    wait_for(lambda: _finished(cluster, "tenants") >= 200, timeout=60, what="tenant a to be draining")
    b = [job.id for job in cluster.app.enqueue_many(tenant_job.message("b") for _ in range(small))]

    wait_for(lambda: all(cluster.app.job(i).status() == "succeeded" for i in b), timeout=60, what="b's jobs")

    enqueued = min(cluster.app.job(i).info().enqueued_at for i in b)
    b_starts = sorted(cluster.app.job(i).info().started_at or 0.0 for i in b)
    a_starts = sorted(
        j.started_at or 0.0
        for j in cluster.app.broker.jobs(queue="tenants", state="succeeded", limit=2 * big)
        if j.id not in b and (j.started_at or 0.0) > enqueued
    )
    assert _finished(cluster, "tenants") < big + small, "tenant a drained before b was served"
    # Each claim alternates between the tenants: b's k-th start comes after at most k starts of
    # a, plus what claims already in flight when b's jobs arrived took (a start is stamped when
    # its claim began: on PostgreSQL, its transaction), at most a full batch per worker.
    in_flight = workers * 8
    for k, start in enumerate(b_starts, 1):
        before = sum(1 for t in a_starts if t < start)
        assert before <= k + in_flight, f"b's job {k} started after {before} starts of a"
