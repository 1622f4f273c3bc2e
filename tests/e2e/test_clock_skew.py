"""Workers with wrong clocks (libfaketime: 5 minutes slow, an hour fast) on the server stores.

The store's clock decides due times and lease expiry, so neither worker starts a delayed task
early, and neither reclaims the other's live leases while they run past the lease on heartbeats.
SQLite has no server clock: all its processes share one host's clock (see the README).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster, cluster_of, wait_for
from stores import STORES

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
