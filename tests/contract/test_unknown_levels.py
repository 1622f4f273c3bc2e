"""Jobs stored at a priority level the reserving worker does not know (a rolling deploy added a
level): they are served as the worker's lowest level, after its due jobs, and nothing spins."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from conveyor import Conveyor
from conveyor.priority import Fairness

from .helpers import LOW, NORMAL, WEIGHTS, enqueue, make_message, reserve


def test_a_job_above_the_known_levels_is_reserved(broker, t0):
    (job,) = enqueue(broker, t0, make_message(priority=3))

    got = reserve(broker, now=t0, limit=10)

    assert [(d.id, d.priority) for d in got] == [(job, 3)]


def test_it_comes_after_the_lowest_levels_due_jobs(broker, t0):
    (unknown,) = enqueue(broker, t0 - 10, make_message(priority=5))
    (low,) = enqueue(broker, t0, make_message(priority=LOW))
    (normal,) = enqueue(broker, t0, make_message(priority=NORMAL))

    order = [d.id for _ in range(3) for d in reserve(broker, now=t0, limit=1)]

    assert order == [normal, low, unknown]


def test_a_single_level_worker_takes_every_stored_level(broker, t0):
    ids = enqueue(broker, t0, *[make_message(priority=p) for p in (0, 1, 4)])

    got = reserve(broker, now=t0, limit=10, fairness=Fairness((1,)))

    assert sorted(d.id for d in got) == sorted(ids)


def test_several_queues_serve_unknown_levels_too(broker, t0):
    a = enqueue(broker, t0, make_message(queue="a", priority=3))
    b = enqueue(broker, t0, make_message(queue="b", priority=7))

    got = reserve(broker, now=t0, queues=["a", "b"], limit=10, fairness=Fairness(WEIGHTS))

    assert sorted(d.id for d in got) == sorted(a + b)


def test_a_worker_runs_a_job_of_a_level_it_lacks_without_spinning(store_url, run_worker):
    wider = Conveyor(store_url, priorities={"high": 6, "normal": 3, "low": 1, "bulk": 1})
    app = Conveyor(store_url)
    ran = threading.Event()

    @wider.task(name="report", queue="q")
    def enqueued() -> None:
        """The producer's view of the task."""

    @app.task(name="report", queue="q")
    def report() -> None:
        ran.set()

    waits = 0
    real_wait: Callable[..., Any] = app.broker.wait

    def counted_wait(*args: Any) -> None:
        nonlocal waits
        waits += 1
        real_wait(*args)

    app.broker.wait = counted_wait  # type: ignore[method-assign]
    try:
        job = enqueued.enqueue(priority="bulk")
        with run_worker(app, queues=["q"], concurrency=1):
            assert ran.wait(10), "the job at the unknown level never ran"
            assert job.result(timeout=10) is None
            settled = waits
            time.sleep(1.0)  # an idle worker waits for wake-ups: a handful of waits, not thousands
            idle_waits = waits - settled
        # A spinning worker waits thousands of times a second; an idle one once per fallback
        # period (1 s at most) or wake-up.
        assert settled <= 20, settled
        assert idle_waits <= 5, idle_waits
    finally:
        wider.close()
        app.close()
