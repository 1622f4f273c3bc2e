"""Three real worker processes serving two saturated queues share their starts between them, on
every backend. A start is a job's ``started_at``: when a worker claimed it, on the store's clock."""

from __future__ import annotations

import pytest
from e2e_app import ok
from harness import Cluster, wait_for

pytestmark = pytest.mark.slow

WORKERS, QUEUED, WINDOW = 3, 1000, 600


def _succeeded(cluster: Cluster) -> int:
    return sum(qs.total("succeeded") for qs in cluster.app.broker.stats(["a", "b"]))


@pytest.mark.parametrize(
    ("concurrency", "queues", "share_of_a"),
    [
        pytest.param(1, ["a", "b"], (0.40, 0.60), id="equal-1"),
        pytest.param(32, ["a", "b"], (0.40, 0.60), id="equal-32"),
        pytest.param(1, ["a:3", "b:1"], (0.65, 0.85), id="weighted-3-1"),
    ],
)
def test_workers_share_their_starts_between_saturated_queues(
    cluster: Cluster, concurrency: int, queues: list[str], share_of_a: tuple[float, float]
) -> None:
    for q in ("a", "b"):
        for start in range(0, QUEUED, 500):
            cluster.app.enqueue_many(ok.message(queue=q) for _ in range(start, start + 500))

    for _ in range(WORKERS):
        cluster.worker(queues=queues, concurrency=concurrency)
    # Both queues stay saturated through the window: each keeps more than WINDOW jobs queued.
    wait_for(lambda: _succeeded(cluster) >= WINDOW, timeout=120, what=f"{WINDOW} jobs to finish")

    starts = sorted(
        (job.started_at or 0.0, q)
        for q in ("a", "b")
        for job in cluster.app.broker.jobs(queue=q, state="succeeded", limit=2 * QUEUED)
    )[:WINDOW]
    of_a = sum(1 for _, q in starts if q == "a") / WINDOW
    low, high = share_of_a
    assert low <= of_a <= high, f"queue a had {of_a:.1%} of the first {WINDOW} starts"
