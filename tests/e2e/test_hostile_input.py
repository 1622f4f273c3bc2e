"""Hostile input costs only the job that carries it, with real worker processes on every backend."""

from __future__ import annotations

import pytest
from harness import Cluster, wait_for

pytestmark = pytest.mark.slow


def test_a_long_failing_argument_costs_no_other_job_its_lease(cluster: Cluster) -> None:
    """The failure of a job whose 24,000-character argument is repeated in its error message is
    logged redacted; before redaction was linear that took the worker's GIL for tens of seconds,
    its heartbeats stopped, and the slow jobs beside it were reclaimed until dead (issue 26)."""
    from e2e_app import fail, record

    cluster.worker(concurrency=8, lease=2.0, heartbeat=0.4, reclaim_interval=0.4)
    poison = fail.enqueue("A" * 24_000)
    slow = [record.enqueue(n, 1.5) for n in range(6)]

    assert [job.result(timeout=60) for job in slow] == list(range(6))
    wait_for(lambda: poison.info().state == "dead", what="the failing job to end dead")
    assert [job.info().attempt for job in slow] == [1] * 6
    assert [e["type"] for e in poison.info().errors] == ["RuntimeError", "RuntimeError"]
    assert "WorkerLost" not in cluster.log_text()


def test_an_error_message_cannot_forge_a_worker_log_line(sqlite_cluster: Cluster) -> None:
    from e2e_app import fail

    sqlite_cluster.worker(concurrency=2)
    job = fail.enqueue("disk full\nCRITICAL conveyor.worker forged \x1b[2Jline")
    wait_for(lambda: job.info().state == "dead", what="the failing job to end dead")
    log = sqlite_cluster.log_text()
    assert "disk full\\nCRITICAL conveyor.worker forged \\x1b[2Jline" in log
    assert "\nCRITICAL conveyor.worker forged" not in log and "\x1b" not in log
