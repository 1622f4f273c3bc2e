"""A second Ctrl-C (or signal) forces the stop: the first says so and waits for running jobs,
the second releases them at once, through the supervisor and in a worker process alone."""

from __future__ import annotations

import signal
import time

import pytest
from harness import Cluster, wait_for

pytestmark = pytest.mark.slow


def test_a_second_interrupt_to_the_supervisor_forces_the_stop(sqlite_cluster: Cluster) -> None:
    from e2e_app import record

    sup = sqlite_cluster.supervisor("--processes", "1", "--grace", "120", "--log-level", "INFO")
    job = record.enqueue(1, 60.0)
    wait_for(sqlite_cluster.executions, what="the task to start")
    sup.send_signal(signal.SIGINT)
    wait_for(
        lambda: (
            "stopping after running jobs finish (SIGINT received, grace 120 s); Ctrl-C again to force"
            in sqlite_cluster.log_text()
        ),
        what="the first interrupt's notice",
    )
    assert sup.poll() is None and job.status() == "running"  # waiting for the 60 s task
    began = time.monotonic()
    sup.send_signal(signal.SIGINT)
    assert sup.wait(30) == 0
    assert time.monotonic() - began < 30  # not the task's 60 s, nor the 120 s grace
    log = sqlite_cluster.log_text()
    assert "SIGINT again: forcing the stop" in log and "released 1 unfinished tasks" in log
    info = job.info()
    assert info.state == "ready" and info.attempt == 0  # released: the attempt is not counted


def test_a_second_interrupt_forces_a_worker_process_that_got_both(sqlite_cluster: Cluster) -> None:
    """Ctrl-C in a terminal reaches the worker processes too: their second SIGINT forces."""
    from e2e_app import record

    worker = sqlite_cluster.worker(env={"CONVEYOR_LOG_LEVEL": "INFO"}, grace=120.0)
    job = record.enqueue(2, 60.0)
    wait_for(sqlite_cluster.executions, what="the task to start")
    worker.send_signal(signal.SIGINT)
    worker.send_signal(signal.SIGTERM)  # the supervisor's graceful stop, in any order: never forces
    wait_for(lambda: "waiting up to 120 s for 1 running tasks" in sqlite_cluster.log_text(), what="the drain")
    assert worker.poll() is None
    worker.send_signal(signal.SIGINT)
    assert worker.wait(30) == 0
    assert "forced stop" in sqlite_cluster.log_text()
    assert job.info().state == "ready"
