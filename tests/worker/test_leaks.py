"""What a worker leaves behind: descriptors of ended threads, task threads, a failed stop."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from waiting import wait_for

from conveyor import Conveyor, RetryPolicy
from conveyor.brokers.sqlite import SQLiteBroker


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_threads_that_used_the_sqlite_broker_and_ended_leave_no_descriptor_open(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/leak.db")
    try:
        broker.stats()
        before = _open_fds()
        for _ in range(10):
            threads = [threading.Thread(target=broker.stats) for _ in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            del threads, t
        # Three per thread were left before (the database, its WAL, the writer lock). SQLite
        # keeps a few descriptors of closed connections for reuse while another connection of
        # the process holds a lock on the file: a handful, however many threads came and went.
        assert _open_fds() - before <= 10, "each ended thread left its connection and lock file open"
    finally:
        broker.close()


def _task_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("conveyor-task")]


def test_task_threads_added_after_timeouts_end_once_idle(app: Conveyor, run_worker: Any) -> None:
    @app.task(timeout=0.1, retry=RetryPolicy(max_attempts=1))
    def stuck() -> None:
        time.sleep(3.0)  # a C call: the timeout's interrupt lands when it returns

    @app.task
    def quick(n: int) -> int:
        return n

    with run_worker(app, concurrency=2, idle_wait=0.1):
        stuck_jobs = [stuck.enqueue() for _ in range(4)]
        assert [quick.enqueue(n).result(timeout=20) for n in range(4)] == list(range(4))
        wait_for(lambda: all(j.status() == "dead" for j in stuck_jobs), what="the timeouts")
        assert len(_task_threads()) > 2  # replacements were added for the stuck threads
        wait_for(lambda: len(_task_threads()) <= 2, timeout=20, what="the extra task threads to end")
        assert quick.enqueue(9).result(timeout=20) == 9


def test_a_release_that_fails_at_stop_still_lets_the_worker_stop_cleanly(
    app: Conveyor, run_worker: Any
) -> None:
    started = threading.Event()

    @app.task
    def slow() -> None:
        started.set()
        time.sleep(3.0)

    def release(*_: Any) -> int:
        raise RuntimeError("the store refuses the release")

    with run_worker(app, concurrency=1, grace=0.1, idle_wait=0.1) as worker:
        slow.enqueue()
        assert started.wait(20)
        app.broker.release = release  # type: ignore[method-assign]
    assert app.broker.workers() == [], "the worker did not leave the registry"
    alive = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith(("conveyor-io", "conveyor-fetch", "conveyor-beat", "conveyor-sweep"))
    ]
    assert alive == []
    assert worker.counts["started"] == 1
