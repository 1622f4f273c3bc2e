"""Cancel and snooze through a real worker on every store (docs/job-control.md).

Workers here heartbeat every 20 s (lease 60 s): a cancel that lands within seconds came through
the store's wake-up channel, not through a heartbeat's answer."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from backend_stores import NAMES, fresh_app
from prometheus_client import REGISTRY
from waiting import wait_for

from conveyor import JobCancelled, JobFailed, Limit, Snooze, current_job

LEASE = 60.0
#: Well under a heartbeat (LEASE / 3): how soon a cancel must reach a running task.
PROMPT = 5.0


def _cancelled_total(task: str) -> float:
    return REGISTRY.get_sample_value("conveyor_cancelled_total", {"queue": "default", "task": task}) or 0.0


@pytest.mark.parametrize("name", NAMES)
def test_a_job_cancelled_while_queued_never_runs(name: str, tmp_path: Path, run_worker: Any) -> None:
    with fresh_app(name, tmp_path) as app:
        ran: list[str] = []

        @app.task
        def mark(what: str) -> str:
            ran.append(what)
            return what

        job = mark.enqueue("cancelled", delay=0.2)
        assert job.cancel() == "cancelled"
        with run_worker(app, lease=LEASE):
            assert mark.enqueue("after", delay=0.4).result(timeout=10) == "after"  # past its due time
        assert ran == ["after"]
        assert job.status() == "cancelled"


@pytest.mark.parametrize("name", NAMES)
def test_cancel_reaches_an_async_task_on_its_loop(name: str, tmp_path: Path, run_worker: Any) -> None:
    with fresh_app(name, tmp_path) as app:
        started, cleaned_up = threading.Event(), threading.Event()

        @app.task(name=f"wait_async_{name}")
        async def wait_async() -> str:
            started.set()
            try:
                await asyncio.sleep(120)
            except asyncio.CancelledError:
                cleaned_up.set()
                raise
            return "too late"

        @app.task
        def other(x: int) -> int:
            return x + 1

        before = _cancelled_total(wait_async.name)
        with run_worker(app, lease=LEASE, concurrency=4):
            job = wait_async.enqueue()
            assert started.wait(10)
            assert job.status() == "running"
            asked = time.monotonic()
            assert job.cancel() == "cancelling"
            with pytest.raises(JobCancelled):
                job.result(timeout=PROMPT)
            assert time.monotonic() - asked < PROMPT
            assert cleaned_up.is_set()
            assert other.enqueue(1).result(timeout=10) == 2  # the worker goes on serving
        info = job.info()
        assert (info.state, info.cancelling, info.attempt) == ("cancelled", False, 1)
        assert info.errors[-1]["type"] == "JobCancelled"
        assert job.cancel() == "finished"
        assert _cancelled_total(wait_async.name) == before + 1


@pytest.mark.parametrize("name", NAMES)
def test_a_sync_task_stops_at_a_safe_point_and_commits_nothing(
    name: str, tmp_path: Path, run_worker: Any
) -> None:
    with fresh_app(name, tmp_path) as app:
        started, saw = threading.Event(), threading.Event()

        @app.task
        def follow_up() -> None: ...

        @app.task
        def cooperative() -> str:
            started.set()
            while not current_job().cancelled:
                time.sleep(0.01)
            saw.set()
            current_job().enqueue(follow_up.message())  # buffered: must never be enqueued
            return "stopped"

        with run_worker(app, lease=LEASE, concurrency=4):
            job = cooperative.enqueue()
            assert started.wait(10)
            assert job.cancel(grace=60) == "cancelling"
            assert wait_for(lambda: job.status() == "cancelling" or saw.is_set(), 10, "the cancel mark")
            with pytest.raises(JobCancelled):
                job.result(timeout=PROMPT)  # well within its grace: it stopped on its own
            assert saw.is_set()
        (stats,) = app.broker.stats(["default"])
        assert [stats.total(s) for s in ("scheduled", "ready", "succeeded", "cancelled")] == [0, 0, 0, 1]
        assert job.info().state == "cancelled"


@pytest.mark.parametrize("name", NAMES)
def test_a_sync_task_past_its_grace_is_interrupted(name: str, tmp_path: Path, run_worker: Any) -> None:
    with fresh_app(name, tmp_path) as app:
        started, interrupted = threading.Event(), threading.Event()

        @app.task
        def stubborn() -> None:
            started.set()
            try:
                while True:  # never looks at current_job().cancelled
                    time.sleep(0.01)
            except JobCancelled:
                interrupted.set()
                raise

        @app.task
        def other(x: int) -> int:
            return x * 2

        with run_worker(app, lease=LEASE, concurrency=4):
            job = stubborn.enqueue()
            assert started.wait(10)
            asked = time.monotonic()
            assert job.cancel(grace=0.5) == "cancelling"
            with pytest.raises(JobCancelled):
                job.result(timeout=PROMPT)
            assert time.monotonic() - asked >= 0.5  # it had its grace
            assert wait_for(interrupted.is_set, 10, "JobCancelled raised in the task's thread")
            assert [other.enqueue(i).result(timeout=10) for i in range(3)] == [0, 2, 4]
        assert "grace" in job.info().errors[-1]["message"]


@pytest.mark.parametrize("name", NAMES)
def test_a_cancelled_job_frees_its_concurrency_slot(name: str, tmp_path: Path, run_worker: Any) -> None:
    with fresh_app(name, tmp_path) as app:
        started: list[int] = []

        @app.task(limits=[Limit(concurrency=1)])
        async def one_at_a_time(n: int) -> int:
            started.append(n)
            if n == 0:
                await asyncio.sleep(120)
            return n

        with run_worker(app, lease=LEASE, concurrency=4):
            first = one_at_a_time.enqueue(0)
            second = one_at_a_time.enqueue(1)
            wait_for(lambda: started == [0], 10, "the first job running")
            assert first.cancel() == "cancelling"
            assert second.result(timeout=PROMPT) == 1  # the slot came free when the first ended
            with pytest.raises(JobCancelled):
                first.result(timeout=1)


@pytest.mark.parametrize("name", NAMES)
def test_success_wins_a_race_with_cancel(name: str, tmp_path: Path, run_worker: Any) -> None:
    with fresh_app(name, tmp_path) as app:
        running: set[int] = set()

        @app.task
        def quick(n: int) -> int:
            running.add(n)
            time.sleep(0.005)
            return n

        with run_worker(app, lease=LEASE, concurrency=4):
            jobs = [quick.enqueue(n) for n in range(20)]
            answers = []
            for n, job in enumerate(jobs):
                wait_for(lambda n=n: n in running, 10, f"job {n} running")
                answers.append(job.cancel(grace=0))
            for job, answer in zip(jobs, answers, strict=True):
                wait_for(lambda job=job: job.status() in ("succeeded", "cancelled"), 10, "the job's end")
                state = job.status()
                assert answer in ("cancelling", "finished"), answer  # each had started
                if answer == "finished":
                    assert state == "succeeded"  # it had succeeded already: left alone
                if state == "succeeded":
                    assert job.result(timeout=1) in range(20)
            done = quick.enqueue(99)
            assert done.result(timeout=10) == 99
            assert done.cancel() == "finished"


@pytest.mark.parametrize("name", NAMES)
def test_snooze_runs_again_later_without_counting_an_attempt(
    name: str, tmp_path: Path, run_worker: Any
) -> None:
    with fresh_app(name, tmp_path) as app:
        runs: list[float] = []

        @app.task(name=f"waits_{name}")
        def waits() -> int:
            runs.append(time.monotonic())
            if len(runs) == 1:
                raise Snooze(0.2)
            if len(runs) == 2:
                current_job().snooze(0.2)
            return current_job().attempt

        @app.task(name=f"forever_{name}", max_snoozes=2)
        def forever() -> None:
            raise Snooze(0.01)

        snoozed = REGISTRY.get_sample_value(
            "conveyor_finished_total", {"queue": "default", "task": waits.name, "outcome": "snoozed"}
        )
        with run_worker(app, lease=LEASE):
            job = waits.enqueue()
            assert job.result(timeout=10) == 1  # still its first attempt
            assert runs[1] - runs[0] >= 0.15 and runs[2] - runs[1] >= 0.15
            dead = forever.enqueue()
            with pytest.raises(JobFailed, match="max_snoozes"):
                dead.result(timeout=10)
        assert job.info().errors == []
        assert dead.info().errors[-1]["type"] == "Snooze"
        after = REGISTRY.get_sample_value(
            "conveyor_finished_total", {"queue": "default", "task": waits.name, "outcome": "snoozed"}
        )
        assert (after or 0) - (snoozed or 0) == 2


@pytest.mark.parametrize("name", NAMES)
def test_a_worker_stopping_reports_a_cancelled_run_cancelled(
    name: str, tmp_path: Path, run_worker: Any
) -> None:
    with fresh_app(name, tmp_path) as app:
        started, finish = threading.Event(), threading.Event()

        @app.task
        def stubborn() -> None:
            started.set()
            finish.wait(60)  # ignores the cancel; its grace outlasts the worker's stop

        try:
            with run_worker(app, lease=LEASE, grace=0.5) as worker:
                job = stubborn.enqueue()
                assert started.wait(10)
                assert job.cancel(grace=600) == "cancelling"
                wait_for(
                    lambda: worker.runner.cancelling([(job.id, worker.running[job.id].token)]),
                    10,
                    "the cancel",
                )
        finally:
            finish.set()
        assert job.status() == "cancelled"  # not released back to its queue
        assert "the worker stopped" in job.info().errors[-1]["message"]
