"""Reserving ahead of free slots: only while tasks are fast, never ahead of an urgent task, and
given back at stop; driven through a real worker and store (``reserve`` only observed). The
urgent task behind held fast ones, end to end, is in test_scheduling."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.records import Delivery
from conveyor.worker.loop import FAST_STREAK, Worker, WorkerConfig


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


def warm_up(worker: Worker, batch: Callable[[], list[Any]]) -> None:
    """Run batches of fast tasks until the worker reserves ahead: FAST_STREAK runs in a row under
    a millisecond each, which one run slowed by a loaded machine starts over."""
    deadline = time.monotonic() + 60
    while worker._fast_runs < FAST_STREAK:
        assert time.monotonic() < deadline, "the tasks never ran fast enough for the look-ahead"
        messages = batch()
        done = worker.counts["succeeded"] + len(messages)
        worker.app.enqueue_many(messages)
        while worker.counts["succeeded"] < done:
            time.sleep(0.005)


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
    with run_worker(app, concurrency=1) as worker:
        warm_up(worker, lambda: [quick.message() for _ in range(FAST_STREAK + 10)])
        app.enqueue_many([quick.message() for _ in range(10)] + [slow.message() for _ in range(20)])
        while len(slow_started) < 20:
            time.sleep(0.005)
    assert max(limit for limit, _ in limits) == 2
    # The first slow run ended before the second started; every reservation after that is for
    # the free slot only (the one after the second start may have been asked just before).
    after = [limit for limit, started in limits if started >= 3]
    assert after and all(limit == 1 for limit in after)


def test_a_newly_reserved_urgent_task_goes_ahead_of_held_lower_ones(app: Conveyor) -> None:
    """The worker's holding order, most urgent level first, then as the store gave them."""

    def delivery(n: int, priority: int) -> Delivery:
        return Delivery(
            id=f"j{n}", task="t", queue="default", priority=priority, payload=b"[[],{}]",
            attempt=1, max_attempts=1, token=1, run_at=0.0, enqueued_at=0.0, key=None,
        )  # fmt: skip

    worker = Worker(app, WorkerConfig(concurrency=1))
    worker._hold([delivery(1, 2), delivery(2, 2)])
    worker._hold([delivery(3, 1), delivery(4, 0), delivery(5, 2)])
    assert [d.id for d in worker.held] == ["j4", "j3", "j1", "j2", "j5"]
    assert set(worker.leases) == {"j1", "j2", "j3", "j4", "j5"}


def test_held_tasks_go_back_to_the_queue_at_once_at_stop(app: Conveyor, run_worker) -> None:
    release = threading.Event()

    @app.task
    def quick() -> None: ...

    @app.task
    def blocker() -> None:
        release.wait(10)

    released_early: list[bool] = []
    with run_worker(app, concurrency=1, grace=10) as worker:
        warm_up(worker, lambda: [quick.message() for _ in range(FAST_STREAK + 10)])
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


def test_a_held_task_whose_lease_was_lost_never_starts_here(app: Conveyor, run_worker) -> None:
    runs: collections.Counter[int] = collections.Counter()
    release = threading.Event()

    @app.task
    def quick(n: int) -> None:
        runs[n] += 1

    @app.task
    def blocker() -> None:
        release.wait(10)

    # Leases lapse long before the next heartbeat, and the worker's own sweep requeues them.
    with run_worker(app, concurrency=1, lease=0.3, heartbeat=1.0, reclaim_interval=0.1) as worker:
        warm_up(worker, lambda: [quick.message(n) for n in range(FAST_STREAK + 10)])
        blocker.enqueue()
        behind = {job.id: job for job in (quick.enqueue(n) for n in range(1000, 1003))}
        while not worker.held:
            time.sleep(0.005)
        (stale,) = worker.held
        # The heartbeat finds the lease gone (the job may at once be leased again, anew).
        while worker.leases.get(stale.id) is stale:
            time.sleep(0.005)
        assert stale not in worker.held
        # The freed room is used at once, not when the blocker ends: a task is held again.
        deadline = time.monotonic() + 5
        while not worker.held and time.monotonic() < deadline:
            time.sleep(0.005)
        assert worker.held
        assert stale not in worker.held
        release.set()
        behind[stale.id].result(timeout=10)
    ran = [n for n in range(1000, 1003) if runs[n]]
    assert all(runs[n] == 1 for n in ran), runs  # run once, by its new lease, not the stale one
