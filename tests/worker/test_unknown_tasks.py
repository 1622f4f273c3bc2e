"""A job whose task the worker does not know (a rolling deploy: a new producer, an old worker)
is put back for a worker that knows it, never run and never lost; after the window, dead with
the reason and the registered names. On every store, through a real worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from backend_stores import NAMES, fresh_app
from waiting import wait_for

from conveyor import Conveyor, Job, JobFailed
from conveyor.records import JobInfo
from conveyor.worker.executor import unknown_delay


def _old_and_new(app: Conveyor) -> tuple[Conveyor, Conveyor]:
    """The producer's new code (a task the old worker lacks) and the old worker's app."""
    new = Conveyor(app.url)
    ran: list[str] = []

    @new.task(name="deploy.new_task")
    def new_task(x: int) -> str:
        ran.append("new")
        return f"ran {x}"

    @app.task(name="deploy.old_task")
    def old_task() -> None: ...

    return new, app


def _deferred(job: Job) -> JobInfo | None:
    info = job.info()
    return info if info.errors else None


@pytest.mark.parametrize("backend", NAMES)
def test_a_job_of_a_task_the_worker_lacks_waits_for_a_worker_that_knows_it(
    backend: str, tmp_path: Path, run_worker
) -> None:
    with fresh_app(backend, tmp_path) as old:
        new, _ = _old_and_new(old)
        try:
            job = new.tasks["deploy.new_task"].enqueue(7)
            with run_worker(old, unknown_task_window=600):
                info = wait_for(lambda: _deferred(job), 10, "the old worker to put the job back")
            assert info.state in ("scheduled", "ready"), info
            assert info.attempt == 0  # the deferral counts no attempt
            error = info.errors[0]
            assert error["type"] == "UnknownTask"
            assert "deploy.new_task" in error["message"] and "deploy.old_task" in error["message"]
            assert "put back" in error["message"]
            with run_worker(new, unknown_task_window=600):
                assert job.result(timeout=15) == "ran 7"
            assert job.info().attempt == 1
        finally:
            new.close()


@pytest.mark.parametrize("backend", NAMES)
def test_after_the_window_the_job_is_dead_with_the_reason(backend: str, tmp_path: Path, run_worker) -> None:
    with fresh_app(backend, tmp_path) as old:
        new, _ = _old_and_new(old)
        try:
            job = new.tasks["deploy.new_task"].enqueue(1)
            with run_worker(old, unknown_task_window=2.5), pytest.raises(JobFailed):
                job.result(timeout=20)  # put back after 1 s and 1.5 s, then dead
            info = job.info()
            assert info.state == "dead"
            assert [e["type"] for e in info.errors] == ["UnknownTask"] * 3
            last = info.errors[-1]["message"]
            assert "unknown task 'deploy.new_task' (registered: deploy.old_task)" in last
            assert "within 2 s" in last or "within 3 s" in last
            assert info.attempt == 1  # two deferrals given back, the last delivery counted
        finally:
            new.close()


def test_with_no_window_an_unknown_task_is_dead_at_once(app: Conveyor, run_worker) -> None:
    new, old = _old_and_new(app)
    try:
        job = new.tasks["deploy.new_task"].enqueue(1)
        with run_worker(old, unknown_task_window=0), pytest.raises(JobFailed, match="unknown task"):
            job.result(timeout=10)
        (error,) = job.info().errors
        assert error["message"] == "unknown task 'deploy.new_task' (registered: deploy.old_task)"
    finally:
        new.close()


def test_the_deferrals_double_to_a_minute_and_span_the_window() -> None:
    delays = []
    while (delay := unknown_delay(len(delays), 600)) is not None:
        delays.append(delay)
    assert delays[:7] == [1, 2, 4, 8, 16, 32, 60]
    assert sum(delays) == 600 and max(delays) == 60
    assert unknown_delay(0, 0) is None
    assert unknown_delay(2, 2.5) is None and unknown_delay(1, 2.5) == 1.5
    assert unknown_delay(10**12, 600) is None  # a corrupt count costs nothing to read
    assert unknown_delay(-5, 600) == 1
