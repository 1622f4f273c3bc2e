"""Cancelling running jobs in real worker processes with ``conveyor cancel``, on every backend
(docs/job-control.md). The workers heartbeat every 20 s: a cancel that lands within seconds came
through the store's wake-up channel."""

from __future__ import annotations

import time

import pytest
from e2e_app import await_long, ok, spin
from harness import Cluster, wait_for

from conveyor import JobCancelled

pytestmark = pytest.mark.slow


def test_conveyor_cancel_stops_running_jobs_in_a_worker_process(cluster: Cluster) -> None:
    cluster.worker(concurrency=4, lease=60.0)
    sync, coro = spin.enqueue(600), await_long.enqueue(600)
    wait_for(lambda: sync.status() == "running" and coro.status() == "running", 30, "both jobs running")

    asked = time.monotonic()
    assert cluster.cli("cancel", cluster.url, coro.id).stdout.strip() == f"{coro.id}: cancelling"
    assert (
        cluster.cli("cancel", cluster.url, sync.id, "--grace", "0.5").stdout.strip()
        == f"{sync.id}: cancelling"
    )
    for job in (coro, sync):
        with pytest.raises(JobCancelled):
            job.result(timeout=10)
    assert time.monotonic() - asked < 10

    assert ok.enqueue().result(timeout=30) == "ok"  # the worker goes on serving
    assert [j.info().attempt for j in (coro, sync)] == [1, 1]
    assert cluster.cli("cancel", cluster.url, sync.id).stdout.strip() == f"{sync.id}: finished"
