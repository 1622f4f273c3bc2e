"""Reserving ahead of free slots: only while tasks are fast, never ahead of an urgent task, and
given back at stop. Driven through a real worker and store; ``reserve`` is only observed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.worker.loop import FAST_STREAK


def observe_reserves(app: Conveyor, monkeypatch: pytest.MonkeyPatch, mark: Callable[[], Any]) -> list:
    """Record ``(limit, mark())`` for every reservation the worker makes."""
    broker = app.broker
    real = broker.reserve
    seen: list = []

    def reserve(queues: Any, limit: int, *args: Any, **kwargs: Any) -> Any:
        seen.append((limit, mark()))
        return real(queues, limit, *args, **kwargs)

    monkeypatch.setattr(broker, "reserve", reserve)
    return seen


def test_fast_tasks_are_reserved_ahead_and_each_runs_once(app: Conveyor, run_worker, monkeypatch) -> None:
    runs: list[int] = []

    @app.task
    def tick(n: int) -> None:
        runs.append(n)

    limits = observe_reserves(app, monkeypatch, lambda: len(runs))
    app.enqueue_many(tick.message(n) for n in range(1000))
    with run_worker(app, concurrency=4):
        while len(runs) < 1000:
            time.sleep(0.005)
    assert sorted(runs) == list(range(1000))
    assert max(limit for limit, _ in limits) > 4  # beyond the free slots (at most twice as many)
    assert max(limit for limit, _ in limits) <= 8
    assert all(limit <= 4 for limit, done in limits if done < FAST_STREAK)  # not before the streak
    assert app.broker.stats(["default"])[0].total("succeeded") == 1000


def test_a_slow_run_turns_the_look_ahead_off(app: Conveyor, run_worker, monkeypatch) -> None:
    slow_started: list[int] = []

    @app.task
    def quick() -> None: ...

    @app.task
    def slow() -> None:
        slow_started.append(1)
        time.sleep(0.005)

    limits = observe_reserves(app, monkeypatch, lambda: len(slow_started))
    app.enqueue_many([quick.message() for _ in range(300)] + [slow.message() for _ in range(20)])
    with run_worker(app, concurrency=1):
        while len(slow_started) < 20:
            time.sleep(0.005)
    assert max(limit for limit, _ in limits) == 2
    # The first slow run ended before the second started; every reservation after that is for
    # the free slot only (the one after the second start may have been asked just before).
    after = [limit for limit, started in limits if started >= 3]
    assert after and all(limit == 1 for limit in after)


def test_an_urgent_task_starts_ahead_of_held_low_ones(app: Conveyor, run_worker) -> None:
    starts: list[str] = []
    lock = threading.Lock()

    @app.task(priority="low")
    def report(n: int) -> None:
        with lock:
            starts.append("low")

    @app.task(priority="high")
    def urgent() -> None:
        with lock:
            starts.append("high")

    for i in range(0, 20_000, 1000):
        app.enqueue_many(report.message(n) for n in range(i, i + 1000))
    with run_worker(app, concurrency=1):
        while len(starts) < 500:  # well past the streak: the worker holds lows ahead
            time.sleep(0.005)
        with lock:
            before = len(starts)
        urgent.enqueue().result(timeout=10)
    # At most the one running and the one reserved while the enqueue committed start first;
    # the held low ones wait behind it.
    assert starts.index("high") <= before + 2
    assert app.broker.stats(["default"])[0].total("ready") > 10_000


def test_held_tasks_go_back_to_the_queue_at_once_at_stop(app: Conveyor, run_worker) -> None:
    fast_runs: list[int] = []
    release = threading.Event()

    @app.task
    def quick() -> None:
        fast_runs.append(1)

    @app.task
    def blocker() -> None:
        release.wait(10)

    app.enqueue_many([quick.message() for _ in range(FAST_STREAK + 10)])
    released_early: list[bool] = []
    with run_worker(app, concurrency=1, grace=10) as worker:
        while len(fast_runs) < FAST_STREAK + 10:
            time.sleep(0.005)
        job = blocker.enqueue()
        behind = [quick.enqueue() for _ in range(3)]
        while not (job.id in worker.running and worker.held):
            time.sleep(0.005)
        (held,) = [d.id for d in worker.held]

        def watch() -> None:
            """Whether the held task is back in its queue while the blocker still runs."""
            while not release.is_set():
                info = app.broker.get(held)
                if info is not None and info.state == "ready":
                    released_early.append(True)
                    break
                time.sleep(0.005)
            release.set()

        threading.Thread(target=watch, daemon=True).start()
        threading.Timer(5.0, release.set).start()  # the watcher's deadline
    assert released_early == [True]  # released at the stop, not after the running task's grace
    info = app.broker.get(held)
    assert info is not None and (info.state, info.attempt) == ("ready", 0)
    assert held in {b.id for b in behind}
    assert job.status() == "succeeded"
