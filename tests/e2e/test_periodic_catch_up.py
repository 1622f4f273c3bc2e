"""Periodic ticks missed while no worker ran, on every backend, with real worker processes.

The schedules (``e2e_app``) tick every second. A worker runs a few ticks and stops; no worker
runs for 3.5 s; a new worker starts. The tick the first worker had stored ahead came due during
the gap. ``skip``: no tick due before the restart runs (none at all is allowed late), then one
per second. ``once``: the latest missed tick runs, once, then one per second.
"""

from __future__ import annotations

import itertools
import time

import pytest
from harness import Cluster, wait_for
from ticks import ran

pytestmark = pytest.mark.slow

FAST = {"lease": 2.0, "heartbeat": 0.2, "reclaim_interval": 0.2, "concurrency": 4}
OUTAGE = 3.5


def _gap(cluster: Cluster, queue: str, name: str) -> tuple[set[float], float]:
    """Run a worker for two ticks, stop it, wait out the outage; the ticks run before it, and
    the store's time at the restart (a new worker is started)."""
    first = cluster.worker(queues=[queue], **FAST)
    wait_for(lambda: len(ran(cluster, name)) >= 2, timeout=30, what="two ticks to run")
    first.terminate()
    first.wait(20)
    before = set(ran(cluster, name))
    time.sleep(OUTAGE)  # the outage itself: no worker runs
    restarted = cluster.app.broker.time()
    cluster.worker(queues=[queue], **FAST)
    return before, restarted


def _after(cluster: Cluster, name: str, before: set[float], restarted: float) -> list[float]:
    wait_for(
        lambda: len([t for t in ran(cluster, name) if t > restarted]) >= 3,
        timeout=30,
        what="three ticks after the restart",
    )
    new = sorted(set(ran(cluster, name)) - before)
    assert len(new) == len([t for t in ran(cluster, name) if t not in before]), "a tick ran twice"
    gaps = {round(b - a, 3) for a, b in itertools.pairwise(new)}
    assert gaps == {1.0}, f"ticks off schedule: {new}\n{cluster.log_text()[-3000:]}"
    return new


def test_skip_runs_no_tick_that_came_due_while_no_worker_ran(cluster: Cluster) -> None:
    before, restarted = _gap(cluster, "seconds", "second_skip")

    new = _after(cluster, "second_skip", before, restarted)

    assert new[0] > restarted, f"a tick missed during the outage ran late: {new}"


def test_once_runs_only_the_latest_missed_tick(cluster: Cluster) -> None:
    before, restarted = _gap(cluster, "seconds_once", "second_once")

    new = _after(cluster, "second_once", before, restarted)

    # The latest tick at or before the new worker's start: not before the restart's second.
    assert restarted - 1.0 <= new[0], f"an older missed tick ran: {new}"
