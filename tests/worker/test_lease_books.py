"""A job leased again to the worker that still runs its lost lease, on every backend.

The worker's books (leases, running tasks, task runs) are kept per (job id, token): the older
run's outcome is refused by the store and must not settle the newer delivery, and the newer
delivery waits, its lease kept by heartbeats, until the older run ends, so the job never runs
twice at once in one worker.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from backend_stores import NAMES, fresh_app
from redis_servers import server
from waiting import wait_for

from conveyor import Conveyor, RetryPolicy, current_job

LEASE = 1.0
#: One worker with room for a second delivery, short leases, frequent heartbeats and sweeps.
FAST: dict[str, Any] = {
    "concurrency": 2,
    "lease": LEASE,
    "heartbeat": 0.2,
    "reclaim_interval": 0.2,
    "idle_wait": 0.1,
}


class Runs:
    """Each run of the slow task: (token, began, ended), by the monotonic clock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.began: list[int] = []
        self.ended: list[tuple[int, float, float]] = []

    def task(self, app: Conveyor, seconds: float) -> Any:
        @app.task(retry=RetryPolicy(max_attempts=5, base=0.01, max_delay=0.05))
        def slow() -> str:
            token, start = current_job().token, time.monotonic()
            with self.lock:
                self.began.append(token)
            time.sleep(seconds)
            with self.lock:
                self.ended.append((token, start, time.monotonic()))
            return "done"

        return slow


def check(app: Conveyor, job: Any, runs: Runs) -> None:
    """At most two runs, never at once, the job succeeded on its second attempt at most."""
    assert job.result(timeout=60) == "done"
    info = job.info()
    assert info.errors and info.errors[0]["type"] == "WorkerLost", "the lease was not lost as planned"
    assert len(runs.began) <= 2, f"the task ran {len(runs.began)} times"
    assert info.attempt <= 2
    assert info.state == "succeeded"
    ordered = sorted(runs.ended, key=lambda r: r[1])
    for (_, _, first_end), (_, second_start, _) in itertools.pairwise(ordered):
        assert second_start >= first_end, "the job ran twice at once in one worker"
    assert sum(s.total("dead") for s in app.broker.stats()) == 0


@pytest.mark.parametrize("name", NAMES)
def test_a_job_leased_again_while_its_lost_run_goes_on_runs_after_it(
    name: str, tmp_path: Path, run_worker: Any
) -> None:
    runs = Runs()
    with fresh_app(name, tmp_path) as app:
        slow = runs.task(app, 3 * LEASE)
        with run_worker(app, **FAST) as worker:
            job = slow.enqueue()
            wait_for(lambda: runs.began, what="the first run")
            # The store's clock says the lease ran out long ago: it is requeued, and this worker,
            # with a free slot, reserves it again while the first run goes on.
            assert app.broker.reclaim(now=time.time() + 3600).requeued == [job.id]
            check(app, job, runs)
            wait_for(lambda: worker.counts["succeeded"] == 1, what="the worker's count")
            assert not worker.leases and not worker.running


def test_a_redis_pause_longer_than_the_lease_runs_the_job_at_most_twice(
    tmp_path: Path, run_worker: Any
) -> None:
    runs = Runs()
    with server(tmp_path / "redis") as redis:
        url = f"redis://127.0.0.1:{redis.port}/0?prefix=books"
        assert redis.proc is not None
        with fresh_app("redis", tmp_path, url=url) as app, fresh_app("redis", tmp_path, url=url) as other:
            slow = runs.task(app, 5 * LEASE)
            with run_worker(app, **FAST):
                job = slow.enqueue()
                wait_for(lambda: runs.began, what="the first run")
                redis.proc.send_signal(signal.SIGSTOP)
                try:
                    # Another worker's sweep, sent while the server stands still, runs when it
                    # resumes. Which of it and this worker's pending heartbeat the server runs
                    # first is a race; the sweep's time, past any lease the heartbeat can set,
                    # makes the sweep win it, as it does whenever the outage outlasts the lease.
                    sweep = threading.Thread(target=other.broker.reclaim, args=(time.time() + 3600,))
                    sweep.start()
                    time.sleep(2.5 * LEASE)  # the outage
                finally:
                    redis.proc.send_signal(signal.SIGCONT)
                sweep.join(30)
                check(app, job, runs)
