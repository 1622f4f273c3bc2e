"""Several worker processes, no leader: exactly one job per tick of a periodic task."""

from __future__ import annotations

import itertools
import sqlite3
import time

import pytest
from harness import Cluster, wait_for

pytestmark = pytest.mark.slow


def test_three_workers_run_each_tick_exactly_once(sqlite_cluster: Cluster) -> None:
    with sqlite3.connect(sqlite_cluster.store.path) as conn:
        conn.execute("CREATE TABLE ticks (tick TEXT, worker_pid INTEGER)")
    workers = [sqlite_cluster.worker(queues=["ticks"], concurrency=2) for _ in range(3)]
    time.sleep(3.2)

    def ticks() -> list[str]:
        with sqlite3.connect(sqlite_cluster.store.path) as conn:
            return [t for (t,) in conn.execute("SELECT tick FROM ticks ORDER BY tick")]

    wait_for(lambda: len(ticks()) >= 5, what="ticks to run")
    for w in workers:
        w.terminate()
        w.wait(20)
    seen = ticks()
    assert len(seen) == len(set(seen)), f"a tick ran twice: {seen}"
    times = [float(t.rsplit(":", 1)[1]) for t in seen]
    gaps = {round(b - a, 3) for a, b in itertools.pairwise(times)}
    assert gaps == {0.5}, f"ticks missing or irregular: {times}"
