"""Priority order and delays, observed in the order a real worker starts tasks."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from conveyor import Conveyor


@pytest.mark.parametrize(
    ("low_seconds", "warm_up", "slack"),
    [
        # Slow low tasks: at most the one low task reserved while the enqueue committed may
        # start first.
        pytest.param(0.002, 20, 1, id="slow-low"),
        # Fast low tasks, well past the streak: the worker holds lows ahead of its free slot,
        # and the urgent one goes ahead of them; at most the running one and the one reserved
        # while the enqueue committed start first.
        pytest.param(0.0, 500, 2, id="fast-low-held-ahead"),
    ],
)
def test_high_task_starts_next_behind_a_10k_low_backlog(
    app: Conveyor, run_worker, low_seconds: float, warm_up: int, slack: int
) -> None:
    starts: list[str] = []
    lock = threading.Lock()

    @app.task(priority="low")
    def report(n: int) -> None:
        with lock:
            starts.append("low")
        if low_seconds:
            time.sleep(low_seconds)

    @app.task(priority="high")
    def urgent() -> None:
        with lock:
            starts.append("high")

    for i in range(0, 10_000, 1000):
        app.enqueue_many(report.message(n) for n in range(i, i + 1000))
    with run_worker(app, concurrency=1):
        while len(starts) < warm_up:
            time.sleep(0.005)
        with lock:
            before = len(starts)
        job = urgent.enqueue()
        job.result(timeout=10)
    assert starts.index("high") <= before + slack
    assert app.broker.stats(["default"])[0].total("ready") > 9000


def test_low_priority_progresses_while_high_is_saturated(app: Conveyor, run_worker) -> None:
    starts: list[str] = []

    @app.task(priority="high")
    def hot() -> None:
        starts.append("high")

    @app.task(priority="low")
    def cold() -> None:
        starts.append("low")

    app.enqueue_many([hot.message() for _ in range(2000)] + [cold.message() for _ in range(300)])
    with run_worker(app, concurrency=1):
        while len(starts) < 140:
            time.sleep(0.005)
    window = starts[:140]
    # Weights 6 (high) : 1 (low) with normal empty: low's share is 1/7 of the slots.
    assert 14 <= window.count("low") <= 26
    assert window.count("high") >= 110


def test_delayed_tasks_never_start_early_and_start_promptly(app: Conveyor, run_worker) -> None:
    @app.task
    def reminder() -> None: ...

    with run_worker(app, idle_wait=30):
        time.sleep(0.1)  # the worker is idle and waiting when the tasks are enqueued
        jobs = [reminder.enqueue(delay=0.3 + 0.1 * i) for i in range(6)]
        for job in jobs:
            job.result(timeout=10)
    lateness = []
    for job in jobs:
        info = job.info()
        assert info.started_at is not None
        assert info.started_at >= info.run_at, "started before its due time"
        lateness.append(info.started_at - info.run_at)
    # A worker that only polled its 1 s fallback would be ~0.5 s late on average.
    assert statistics.median(lateness) < 0.25


def test_run_at_in_the_past_runs_now(app: Conveyor, run_worker) -> None:
    @app.task
    def overdue() -> str:
        return "ran"

    with run_worker(app):
        assert overdue.enqueue(run_at=time.time() - 3600).result(timeout=10) == "ran"


def test_several_queues_are_served_by_one_worker(app: Conveyor, run_worker) -> None:
    @app.task(queue="emails")
    def email() -> str:
        return "email"

    @app.task(queue="reports")
    def report() -> str:
        return "report"

    @app.task(queue="ignored")
    def other() -> None: ...

    with run_worker(app, queues=["emails", "reports"]):
        assert email.enqueue().result(timeout=10) == "email"
        assert report.enqueue().result(timeout=10) == "report"
        skipped = other.enqueue()
        time.sleep(0.3)
        assert skipped.status() == "ready"
