"""Long tasks (scenario C), with real worker processes on every backend.

- Tasks running three times their lease, on two workers that sweep for expired leases every
  0.2 s, are delivered once: heartbeats keep their leases.
- A sync task holding the GIL in a C call for longer than its lease stalls its whole process,
  heartbeats included. What docs/guarantees.md says then happens is checked step by step: the lease
  expires, another worker reclaims the task and runs it, the first run's outcome is refused
  (its fencing token is stale), and the effect happens once.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import os
import threading
import time
from pathlib import Path

import pytest
from harness import Cluster, wait_for

pytestmark = pytest.mark.slow

LEASE = 1.0
FAST = {"lease": LEASE, "heartbeat": 0.2, "reclaim_interval": 0.2}


def executions_per_task(cluster: Cluster) -> collections.Counter[int]:
    return collections.Counter(int(line.split()[0]) for line in cluster.executions())


def test_tasks_running_three_times_the_lease_are_delivered_once(cluster: Cluster) -> None:
    from e2e_app import record

    workers = [cluster.worker(concurrency=4, **FAST) for _ in range(2)]
    jobs = [record.enqueue(n, 3 * LEASE) for n in range(8)]
    assert [job.result(timeout=60) for job in jobs] == list(range(8))

    assert executions_per_task(cluster) == dict.fromkeys(range(8), 1), "a task was delivered twice"
    assert sorted(cluster.ledger()) == list(range(8))
    for job in jobs:
        info = job.info()
        assert info.attempt == 1
        assert info.errors == []
        assert info.started_at is not None and info.finished_at is not None
        assert info.finished_at - info.started_at >= 3 * LEASE

    # Both workers were up and sweeping for expired leases; neither found or lost one.
    def counts() -> list[dict[str, int]]:
        return [w.counts if (w := cluster.registered(p)) else {} for p in workers]

    wait_for(lambda: sum(c.get("succeeded", 0) for c in counts()) == 8, what="the workers' counts")
    assert [c["lost"] for c in counts()] == [0, 0]
    assert "reclaimed expired leases" not in cluster.log_text()
    assert "lease lost" not in cluster.log_text()


def test_without_heartbeats_the_same_task_is_reclaimed_and_delivered_again(cluster: Cluster) -> None:
    """The control of the test above: the same setup with heartbeats too rare to keep the lease
    does deliver the task twice, so counting executions does catch a lapsed lease."""
    from e2e_app import record

    cluster.worker(concurrency=4, lease=LEASE, heartbeat=30.0, reclaim_interval=0.2)
    job = record.enqueue(0, 3 * LEASE)
    wait_for(lambda: executions_per_task(cluster)[0] >= 2, timeout=30, what="a second delivery")
    assert job.info().errors[0]["type"] == "WorkerLost"


def _longest_pause_of_another_thread(libc: ctypes.CDLL) -> float:
    """Longest gap between the ticks of a thread ticking every millisecond while this one calls
    ``usleep(300 ms)`` through ``libc``."""
    ticks: list[float] = []
    done = threading.Event()

    def tick() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    while len(ticks) < 10:
        time.sleep(0.001)
    begin = time.monotonic()
    libc.usleep(300_000)
    end = time.monotonic()
    while not ticks or ticks[-1] <= end:
        time.sleep(0.001)
    done.set()
    ticker.join()
    around = (
        [t for t in ticks if t < begin][-1:]
        + [t for t in ticks if begin <= t <= end]
        + [next(t for t in ticks if t > end)]
    )
    return max(b - a for a, b in itertools.pairwise(around))


def test_a_pydll_call_keeps_the_gil_and_a_cdll_call_does_not() -> None:
    """What the GIL test below relies on: a C call made through ``ctypes.PyDLL`` keeps the GIL,
    so no other thread of the process runs until it returns (``CDLL`` releases it)."""
    assert _longest_pause_of_another_thread(ctypes.PyDLL(None)) >= 0.29
    assert _longest_pause_of_another_thread(ctypes.CDLL(None)) < 0.1


def test_task_holding_the_gil_past_its_lease_runs_again_elsewhere_and_its_effect_lands_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    from e2e_app import gil_hog

    release = tmp_path / "release"
    os.mkfifo(release)
    job = gil_hog.enqueue(5, str(release))
    first = cluster.worker(concurrency=1, **FAST)
    wait_for(lambda: job.info().worker == cluster.worker_id(first), what="the first worker to take the task")
    wait_for(lambda: len(cluster.executions()) == 1, what="the first run to begin")

    # While the first run holds the GIL (until the test writes to the FIFO), a second worker
    # reclaims the task once its lease expires, runs it and acknowledges it.
    second = cluster.worker(concurrency=1, **FAST)
    assert job.result(timeout=30) == 5
    assert first.poll() is None, "the first worker is alive, only stalled"
    info = job.info()
    assert info.attempt == 2
    assert info.worker == cluster.worker_id(second)
    assert [(e["type"], e["worker"]) for e in info.errors] == [("WorkerLost", cluster.worker_id(first))]
    assert cluster.ledger() == [5]
    # Its heartbeats stalled with the task: its entry in the worker registry lapsed.
    assert cluster.registered(first) is None
    assert cluster.registered(second) is not None

    # The GIL is released: the first run ends, its outcome and effect are refused.
    fd = os.open(release, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO if the task is not reading it
    os.write(fd, b"x")
    os.close(fd)
    wait_for(
        lambda: (w := cluster.registered(first)) is not None and w.counts["lost"] == 1,
        what="the first worker to count its refused outcome",
    )
    counts = cluster.registered(first).counts  # type: ignore[union-attr]
    assert (counts["started"], counts["succeeded"], counts["lost"]) == (1, 0, 1)
    assert "lease lost" in cluster.log_text()
    assert cluster.ledger() == [5], "the stale run's effect must not commit"
    assert job.info() == info, "the refused outcome changed nothing"
    runs = [line.split() for line in cluster.executions()]
    assert [(int(n), int(pid)) for n, _token, pid in runs] == [(5, first.pid), (5, second.pid)]
    assert runs[0][1] != runs[1][1], "each run had its own fencing token"
