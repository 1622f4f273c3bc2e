"""Delay and priority under overload (scenario E), with real worker processes on every backend.

Times are the store's own: a job's ``run_at`` (when it was due) and ``started_at`` (when a worker
claimed it), both on the store's clock.
"""

from __future__ import annotations

import itertools
import statistics

import pytest
from harness import Cluster, wait_for

from conveyor.records import JobInfo

pytestmark = pytest.mark.slow

WORKERS, CONCURRENCY = 2, 4
FAST = {"lease": 1.0, "heartbeat": 0.2, "reclaim_interval": 0.2, "concurrency": CONCURRENCY}
HIGH, NORMAL, LOW = 0, 1, 2


def start_workers(cluster: Cluster) -> None:
    workers = [cluster.worker(**FAST) for _ in range(WORKERS)]
    wait_for(lambda: all(cluster.registered(w) for w in workers), what="the workers to start")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def started(info: JobInfo | None) -> float:
    assert info is not None and info.started_at is not None
    return info.started_at


def test_delayed_tasks_never_start_early_while_immediate_tasks_saturate_the_workers(cluster: Cluster) -> None:
    """A backlog of immediate normal tasks keeps every slot busy for ~4 s (640 tasks of 50 ms on
    8 slots); meanwhile delayed tasks come due between 0.5 and 3 s after enqueue: high ones,
    which take the next free slot once due, and normal ones, which are served first due, first
    served behind the backlog that was due before them. None may start before its due time."""
    from e2e_app import app, record

    start_workers(cluster)
    backlog = app.enqueue_many(record.message(n, 0.05) for n in range(640))
    delays = [0.5 + 2.5 * i / 23 for i in range(24)]
    high = [record.enqueue(1000 + i, 0.05, delay=d, priority="high") for i, d in enumerate(delays)]
    normal = [record.enqueue(2000 + i, 0.05, delay=d) for i, d in enumerate(delays[::2])]
    for job in backlog + high + normal:
        job.result(timeout=120)

    backlog_infos = [app.broker.get(j.id) for j in backlog]
    high_infos = [j.info() for j in high]
    normal_infos = [j.info() for j in normal]
    last_backlog_start = max(started(i) for i in backlog_infos)
    # Saturated: when the last delayed task came due, the backlog still had tasks waiting.
    assert last_backlog_start > max(i.run_at for i in high_infos + normal_infos)
    # Never early, on the store's clock.
    early = [(i.id, i.run_at - started(i)) for i in high_infos + normal_infos if started(i) < i.run_at]
    assert early == []

    def lateness(infos: list[JobInfo]) -> list[float]:
        return [started(i) - i.run_at for i in infos]

    late_high, late_normal = lateness(high_infos), lateness(normal_infos)
    for name, late in (("high", late_high), ("normal", late_normal)):
        print(
            f"\n[{cluster.store.name}] lateness of {len(late)} delayed {name} tasks under overload: "
            f"p50 {statistics.median(late) * 1000:.0f} ms, p99 {percentile(late, 99) * 1000:.0f} ms, "
            f"max {max(late) * 1000:.0f} ms"
        )
    # A due high task waits for a free slot (a 50 ms task ends every ~6 ms), not for the backlog.
    assert max(late_high) < 0.5
    # A due normal task waits for the backlog due before it, no longer.
    assert all(started(i) <= last_backlog_start + 0.5 for i in normal_infos)
    assert sorted(cluster.ledger()) == sorted(range(640)) + [1000 + i for i in range(24)] + [
        2000 + i for i in range(12)
    ]


def test_weights_6_3_1_give_every_level_its_share_under_overload(cluster: Cluster) -> None:
    """Backlogs of 600 tasks of 20 ms on each of the three levels, more than runs (~2 s, until
    800 have run): for the whole run every level has ready tasks, so the run is the saturated
    window. The low level (weight 1 of 10) gets at
    least 5 % of the starts, and no level goes long without one."""
    from e2e_app import app, record

    per_level = 600
    start_workers(cluster)
    for level, name in enumerate(("high", "normal", "low")):
        app.enqueue_many(record.message(level * per_level + i, 0.02, priority=name) for i in range(per_level))

    def finished() -> int:
        return app.broker.stats(["default"])[0].total("succeeded")

    wait_for(lambda: finished() >= 800, timeout=120, what="800 tasks to run")
    cluster.stop_all()  # graceful: the running tasks finish

    ready = app.broker.stats(["default"])[0].counts.get("ready", {})
    assert all(ready.get(level, 0) > 0 for level in (HIGH, NORMAL, LOW)), f"a level ran dry: {ready}"
    ran = app.broker.jobs(queue="default", state="succeeded", limit=10_000)
    assert app.broker.jobs(queue="default", state="running", limit=1) == []
    starts = sorted((started(i), i.priority) for i in ran)
    first, last = starts[0][0], starts[-1][0]
    shares, gaps = {}, {}
    for level in (HIGH, NORMAL, LOW):
        times = [first] + [t for t, p in starts if p == level] + [last]
        shares[level] = (len(times) - 2) / len(starts)
        gaps[level] = max(b - a for a, b in itertools.pairwise(times))
    print(
        f"\n[{cluster.store.name}] {len(starts)} starts in {last - first:.2f} s, shares high/normal/low "
        + "/".join(f"{shares[level]:.1%}" for level in (HIGH, NORMAL, LOW))
        + ", longest wait between starts "
        + "/".join(f"{gaps[level] * 1000:.0f} ms" for level in (HIGH, NORMAL, LOW))
    )
    assert shares[LOW] >= 0.05
    assert shares[HIGH] > shares[NORMAL] > shares[LOW]
    assert max(gaps.values()) < 1.0, "a level went a second without a start"
