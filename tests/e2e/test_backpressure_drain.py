"""Backpressure through a real worker: a capped queue refuses enqueues while full, a worker
drains it, and enqueues are accepted again; the refusals are counted in the producer's metric."""

from __future__ import annotations

import pytest
from harness import Cluster
from prometheus_client import REGISTRY

from conveyor.errors import QueueFull

CAP = 20


def refused(queue: str) -> float:
    return REGISTRY.get_sample_value("conveyor_enqueue_refused_total", {"queue": queue}) or 0.0


def test_a_full_queue_refuses_until_a_worker_drains_it(cluster: Cluster) -> None:
    from e2e_app import app, record

    app.max_queued = {"default": CAP}
    try:
        before = refused("default")
        first = app.enqueue_many(record.message(n) for n in range(CAP))
        with pytest.raises(QueueFull) as caught:
            record.enqueue(CAP)
        assert (caught.value.queue, caught.value.queued, caught.value.cap) == ("default", CAP, CAP)
        with pytest.raises(QueueFull):
            app.enqueue_many(record.message(n) for n in range(100, 105))
        assert refused("default") - before == 6

        cluster.worker()
        assert sorted(job.result(timeout=60) for job in first) == list(range(CAP))

        # Drained: the queue takes a full batch again, and the worker runs it.
        second = app.enqueue_many(record.message(n) for n in range(CAP, 2 * CAP))
        assert all(job.created for job in second)
        assert sorted(job.result(timeout=60) for job in second) == list(range(CAP, 2 * CAP))
        assert sorted(cluster.ledger()) == list(range(2 * CAP))
    finally:
        app.max_queued = {}
