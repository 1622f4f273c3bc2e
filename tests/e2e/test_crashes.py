"""At-least-once and exactly-once with real processes: SIGKILL, SIGSTOP, SIGTERM, poison tasks."""

from __future__ import annotations

import collections
import signal
import time

import pytest
from harness import PAUSABLE, Cluster, wait_for

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
    # Started, not only leased: a task reserved but not begun is released at a stop.
    wait_for(cluster.executions, what="the task to start")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    assert job.status() == "succeeded"
    assert cluster.ledger() == [1]


def started_by(cluster: Cluster, n: int, pid: int) -> bool:
    """Whether process ``pid`` has begun running task ``n`` (execution lines are "n token pid")."""
    return any(line.split()[::2] == [str(n), str(pid)] for line in cluster.executions())


def test_zombie_worker_cannot_complete_a_reclaimed_task(cluster: Cluster) -> None:
    """Scenario B. A worker is SIGSTOPped for twice its lease while it runs a task, three times;
    each time another worker reclaims the task and finishes it, and when the zombie resumes its
    late outcome is refused: an acknowledgement (with its effect) twice, a retry once. Refusals
    counted by the zombie = pauses; every effect once; nothing the zombie reported is recorded."""
    from e2e_app import record, record_or_fail_first

    lease, run = 1.0, 0.8
    config = {"lease": lease, "heartbeat": 0.2, "reclaim_interval": 0.2, "concurrency": 1}
    zombie = cluster.worker(env=PAUSABLE, **config)
    zombie_id = cluster.worker_id(zombie)
    rounds = [record, record_or_fail_first, record]  # the late outcome: ack, retry, ack
    jobs = []
    for n, task in enumerate(rounds):
        job = task.enqueue(n, run)
        jobs.append(job)
        wait_for(lambda n=n: started_by(cluster, n, zombie.pid), what="the zombie to start the task")
        cluster.pause(zombie)
        paused = time.monotonic()
        before = job.info()
        assert (before.state, before.attempt, before.worker) == ("running", 1, zombie_id)
        rescuer = cluster.worker(**config)
        assert job.result(timeout=30) == n
        time.sleep(max(0.0, paused + 2 * lease - time.monotonic()))  # the pause lasts 2x the lease
        cluster.resume(zombie)
        wait_for(
            lambda n=n: (w := cluster.registered(zombie)) is not None and w.counts["lost"] == n + 1,
            what="the zombie to count its refused outcome",
        )
        rescuer.terminate()
        assert rescuer.wait(15) == 0

    counts = cluster.registered(zombie).counts  # type: ignore[union-attr]
    assert counts == {
        "started": 3,
        "succeeded": 0,
        "retry": 0,
        "dead": 0,
        "lost": 3,
        "throttled": 0,
        "cancelled": 0,
        "snoozed": 0,
    }
    assert "lease lost" in cluster.log_text()
    assert sorted(cluster.ledger()) == [0, 1, 2], "a zombie's late acknowledgement committed its effect"
    for n, job in enumerate(jobs):
        info = job.info()
        assert (info.state, info.attempt, info.result) == ("succeeded", 2, str(n).encode())
        # Only the reclaim is recorded: the zombie's refused retry added no RuntimeError.
        assert [(e["type"], e["worker"]) for e in info.errors] == [("WorkerLost", zombie_id)]
    runs = [line.split() for line in cluster.executions()]
    delivered = collections.Counter(int(n) for n, _, _ in runs)
    assert delivered == {0: 2, 1: 2, 2: 2}  # delivered twice, effective once
    assert len({(n, token) for n, token, _ in runs}) == len(runs), "two runs had the same fencing token"
