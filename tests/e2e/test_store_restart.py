"""The store itself goes away mid-run: workers reconnect with backoff and nothing is lost.

PostgreSQL: the machine's server is restarted (``pg_ctlcluster restart``) while two worker
processes drain a backlog whose every task writes a ledger row with its acknowledgement; the run
completes with every row exactly once.
"""

from __future__ import annotations

import collections
import os
import subprocess

import pytest
from harness import Cluster, wait_for

pytestmark = pytest.mark.slow

FAST = {"lease": 2.0, "heartbeat": 0.4, "reclaim_interval": 0.4}


def _restart_postgres() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_postgres_restarted_mid_run_loses_nothing(postgres_cluster: Cluster) -> None:
    cluster = postgres_cluster
    from e2e_app import app, record

    total = 2000
    for start in range(0, total, 500):
        app.enqueue_many(record.message(n, 0.02) for n in range(start, start + 500))
    workers = [cluster.worker(concurrency=8, **FAST) for _ in range(2)]

    def finished() -> int:
        stats = app.broker.stats(["default"])[0]
        return stats.total("succeeded") + stats.total("dead")

    wait_for(lambda: finished() >= total // 10, timeout=60, what="the run to get going")
    _restart_postgres()
    # 2.5 s of work at least (2000 x 20 ms over 16 slots): the restart fell inside the run.
    assert finished() < total, "the run ended before the restart"
    assert all(w.poll() is None for w in workers), "a worker died with the store"
    wait_for(lambda: finished() == total, timeout=120, what="every task to finish after the restart")

    stats = app.broker.stats(["default"])[0]
    assert stats.total("succeeded") == total, stats
    ledger = cluster.ledger()
    assert [n for n, c in collections.Counter(ledger).items() if c > 1] == []
    assert sorted(ledger) == list(range(total))
    # The workers met the restart: one of their calls failed and was retried, or their pool
    # found connections closed under it (then the calls waited for a new one and never failed).
    noticed = (
        "reserve failed",
        "failed; retrying",
        "unavailable",
        "discarding a connection the server closed",
    )
    assert any(sign in cluster.log_text() for sign in noticed), cluster.log_text()[-2000:]
