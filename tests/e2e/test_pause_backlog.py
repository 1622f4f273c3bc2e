"""Pausing a queue (or a task in it) while real worker processes drain its backlog, on every
store: no job it covers starts after ``pause`` returned (a start is a job's ``started_at``: when
a worker claimed it, on the store's clock), while the workers go on serving what the pause does
not cover; after ``resume`` the rest drains."""

from __future__ import annotations

import pytest
from e2e_app import nap, ok
from harness import Cluster, wait_for

pytestmark = pytest.mark.slow

BACKLOG = 400


def _naps(cluster: Cluster, state: str) -> list[float]:
    """started_at of the nap jobs in ``state``."""
    jobs = cluster.app.broker.jobs(queue="default", state=state, task=nap.name, limit=2 * BACKLOG)
    return [j.started_at or 0.0 for j in jobs]


def _total(cluster: Cluster, queue: str, state: str) -> int:
    return sum(qs.total(state) for qs in cluster.app.broker.stats([queue]))


@pytest.mark.parametrize("scope", ["queue", "task"])
def test_no_start_after_pause_returns_and_resume_drains_the_rest(cluster: Cluster, scope: str) -> None:
    app = cluster.app
    app.enqueue_many(nap.message(0.005) for _ in range(BACKLOG))
    for _ in range(2):
        cluster.worker(queues=["default", "probe"], concurrency=4)
    wait_for(lambda: len(_naps(cluster, "succeeded")) >= 40, timeout=60, what="the backlog to drain")

    task = nap.name if scope == "task" else None
    app.pause("default", task)
    paused_at = app.broker.time()  # the pause returned before this reading of the store's clock
    ready_at_pause = len(_naps(cluster, "ready"))

    # The workers keep reserving what the pause does not cover: another queue, or another task of
    # the paused queue. Each of these jobs ran after the pause, through the same reservations.
    witness_queue = "probe" if scope == "queue" else "default"
    for _ in range(3):
        job = ok.enqueue(queue=witness_queue)
        wait_for(lambda: job.status() == "succeeded", what="a job the pause does not cover")  # noqa: B023
    wait_for(lambda: not _naps(cluster, "running"), what="the running jobs to finish")

    started = _naps(cluster, "succeeded")
    assert max(started) <= paused_at
    left = len(_naps(cluster, "ready"))
    assert left == ready_at_pause > 0 and left + len(started) == BACKLOG  # none claimed since
    assert _total(cluster, "default", "ready") == left  # counted ready, kept

    resumed_at = app.broker.time()
    app.resume("default", task)
    wait_for(lambda: len(_naps(cluster, "succeeded")) == BACKLOG, timeout=60, what="the rest to drain")

    starts = _naps(cluster, "succeeded")
    assert [s for s in starts if paused_at < s < resumed_at] == []
    after = sorted(s for s in starts if s >= resumed_at)
    assert len(after) == left
    print(f"{scope} pause: first start {1000 * (after[0] - resumed_at):.1f} ms after resume")
