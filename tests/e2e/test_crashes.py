"""At-least-once and exactly-once with real processes: SIGKILL, SIGSTOP, SIGTERM, poison tasks."""

from __future__ import annotations

import signal

import pytest
from harness import Cluster, wait_for

from conveyor import JobFailed

pytestmark = pytest.mark.slow
FAST = {"lease": 1.0, "heartbeat": 0.2, "reclaim_interval": 0.2}


def running(cluster: Cluster) -> int:
    return cluster.app.broker.stats(["default"])[0].total("running")


def test_sigkill_mid_task_is_reclaimed_and_completed_elsewhere(cluster: Cluster) -> None:
    from e2e_app import record

    a = cluster.worker(concurrency=4, **FAST)
    jobs = [record.enqueue(n, 1.5) for n in range(4)]
    wait_for(lambda: running(cluster) == 4, what="4 running tasks")
    a.kill()
    a.wait()
    cluster.worker(concurrency=4, **FAST)
    for job in jobs:
        job.result(timeout=30)
    for job in jobs:
        info = job.info()
        assert info.attempt == 2
        assert [e["type"] for e in info.errors] == ["WorkerLost"]
    assert sorted(cluster.ledger()) == [0, 1, 2, 3]


@pytest.mark.parametrize("how", ["exit", "segfault"])
def test_poison_task_ends_dead_and_others_keep_flowing(cluster: Cluster, how: str) -> None:
    from e2e_app import ok, poison

    sup = cluster.supervisor("--processes", "1", "--concurrency", "1", "--lease", "0.5", "--heartbeat", "0.1")
    bad = poison.enqueue(how)
    with pytest.raises(JobFailed, match="worker lost"):
        bad.result(timeout=60)
    info = bad.info()
    assert info.state == "dead"
    assert info.attempt == 3
    assert [e["type"] for e in info.errors] == ["WorkerLost"] * 3
    assert ok.enqueue().result(timeout=30) == "ok"
    assert sup.poll() is None, "the supervisor must survive its workers' deaths"


def test_memory_error_is_a_failed_attempt_and_the_worker_survives(cluster: Cluster) -> None:
    from e2e_app import hog, ok

    worker = cluster.worker(concurrency=2, **FAST)
    bad = hog.enqueue()
    with pytest.raises(JobFailed, match="MemoryError"):
        bad.result(timeout=60)
    assert [e["type"] for e in bad.info().errors] == ["MemoryError"] * 3
    assert ok.enqueue().result(timeout=30) == "ok"
    assert worker.poll() is None


def test_sigterm_finishes_the_running_task(cluster: Cluster) -> None:
    from e2e_app import record

    sup = cluster.supervisor("--processes", "1", "--grace", "20")
    job = record.enqueue(1, 1.0)
    wait_for(lambda: running(cluster) == 1, what="the task to start")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    assert job.status() == "succeeded"
    assert cluster.ledger() == [1]


def test_zombie_worker_cannot_complete_a_reclaimed_task(cluster: Cluster) -> None:
    from e2e_app import record

    zombie = cluster.worker(concurrency=1, lease=0.5, heartbeat=0.1, reclaim_interval=0.1)
    job = record.enqueue(7, 1.0)
    wait_for(lambda: running(cluster) == 1, what="the zombie to take the task")
    zombie.send_signal(signal.SIGSTOP)
    cluster.worker(concurrency=1, lease=0.5, heartbeat=0.1, reclaim_interval=0.1)
    assert job.result(timeout=30) == 7
    zombie.send_signal(signal.SIGCONT)
    wait_for(lambda: "lease lost" in cluster.log_text(), what="the zombie to report its lost lease")
    assert cluster.ledger() == [7], "the zombie's late acknowledgement must not commit its effect"
    info = job.info()
    assert info.attempt == 2
    assert len(cluster.executions()) == 2  # delivered twice, effective once
