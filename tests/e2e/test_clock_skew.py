"""Workers with wrong clocks (libfaketime: 5 minutes slow, an hour fast) on the server stores.

The store's clock decides due times and lease expiry, so neither worker starts a delayed task
early, and neither reclaims the other's live leases while they run past the lease on heartbeats.
SQLite has no server clock: all its processes share one host's clock (see docs/guarantees.md).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster, cluster_of, wait_for
from stores import STORES
from ticks import ran, stored, tick_time

pytestmark = pytest.mark.slow

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
FAST = {"lease": 1.0, "heartbeat": 0.2, "reclaim_interval": 0.2, "concurrency": 8}


def skewed(offset: str) -> dict[str, str]:
    """Environment that runs a process with its wall clock shifted by ``offset`` ("+1h")."""
    assert LIBFAKETIME.exists(), "libfaketime is missing: `make test` installs Debian's faketime"
    # The monotonic clock shifts by the same constant, which no interval measured on it notices
    # (libfaketime's DONT_FAKE_MONOTONIC breaks Python's time.sleep).
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset}


@pytest.fixture(params=[name for name in STORES if name != "sqlite"])
def server_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster_of(STORES[request.param](tmp_path), tmp_path)


def test_skewed_workers_neither_start_early_nor_steal_leases(server_cluster: Cluster) -> None:
    cluster = server_cluster
    from e2e_app import app, record

    long_runs = [record.message(n, 2.0) for n in range(8)]  # twice the lease, on heartbeats
    delayed = [record.message(n, 0.0, delay=1.0 + n / 20) for n in range(100, 120)]
    jobs = app.enqueue_many([*long_runs, *delayed])
    cluster.worker(env=skewed("-5m"), **FAST)
    cluster.worker(env=skewed("+1h"), **FAST)

    total = len(jobs)
    wait_for(
        lambda: app.broker.stats(["default"])[0].total("succeeded") == total,
        timeout=60,
        what="every task to succeed",
    )
    real_now = time.time()
    for job in jobs[len(long_runs) :]:
        info = job.info()
        assert info.started_at is not None and info.finished_at is not None
        assert info.run_at <= info.started_at <= info.finished_at <= real_now, info
        assert info.started_at - info.enqueued_at >= 1.0 - 1e-3, "a delayed task started early"
    executions = cluster.executions()
    assert len(executions) == total, "a live lease was reclaimed and its task ran twice"
    assert [n for n, c in collections.Counter(cluster.ledger()).items() if c > 1] == []
    assert sorted(cluster.ledger()) == [*range(8), *range(100, 120)]


def test_skewed_workers_neither_erase_others_nor_outlive_their_death_in_the_registry(
    server_cluster: Cluster,
) -> None:
    """A worker's registry entry lives ``ttl`` seconds from its last beat by the store's clock:
    a slow worker is listed, a fast one leaves once dead and erases nobody."""
    cluster = server_cluster
    normal = cluster.worker(**FAST)
    fast = cluster.worker(env=skewed("+1d"), **FAST)
    slow = cluster.worker(env=skewed("-5m"), **FAST)
    ids = {cluster.worker_id(p) for p in (normal, fast, slow)}

    def listed() -> set[str]:
        return {w.id for w in cluster.app.broker.workers()}

    wait_for(lambda: ids <= listed(), timeout=20, what="the three workers to be listed")
    watch = time.monotonic() + 2.0  # ten heartbeats of each
    while time.monotonic() < watch:
        assert ids <= listed(), "a worker's entry was erased or expired while it beat"
        time.sleep(0.05)
    fast.kill()
    fast.wait()
    killed = time.monotonic()
    wait_for(
        lambda: cluster.worker_id(fast) not in listed(), timeout=20, what="the dead fast worker to leave"
    )
    ttl = 3 * FAST["heartbeat"]
    assert time.monotonic() - killed < ttl + 1.0
    assert ids - {cluster.worker_id(fast)} <= listed()


def test_skewed_workers_plan_periodic_ticks_on_the_stores_clock(server_cluster: Cluster) -> None:
    """Ticks are planned and due on the store's clock: a slow worker does not enqueue ticks of
    the past (which would run at once, late by its skew), a fast one none of the future."""
    cluster = server_cluster
    began = cluster.app.broker.time()
    cluster.worker(env=skewed("-5m"), queues=["seconds"], **FAST)
    cluster.worker(env=skewed("+1d"), queues=["seconds"], **FAST)

    wait_for(lambda: len(ran(cluster, "second_skip")) >= 5, timeout=30, what="five ticks to run")
    now = cluster.app.broker.time()
    jobs = stored(cluster, "seconds")
    ticks = sorted(tick_time(j.key or "") for j in jobs)
    assert began - 1.0 <= ticks[0] and ticks[-1] <= now + 1.0, f"a tick planned on a skewed clock: {ticks}"
    runs = ran(cluster, "second_skip")
    assert len(runs) == len(set(runs)), f"a tick ran twice: {runs}"
    for j in jobs:
        if j.state == "succeeded" and tick_time(j.key or "") in runs:
            assert j.started_at is not None and j.started_at - j.run_at < 0.5, j
