"""Why a job gave up, recorded by the worker that buried it and said by `conveyor dead show`;
what the worker logs of a requested retry and of a return value that cannot be stored. Through a
real worker on every store (the reason rides in the stored error record)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from backend_stores import NAMES, fresh_app
from click.testing import CliRunner
from waiting import wait_for

from conveyor import RateLimited, Retry, RetryPolicy
from conveyor.cli import main
from conveyor.context import current_job
from conveyor.dead_reason import gave_up


@pytest.mark.parametrize("name", NAMES)
def test_each_dead_job_says_why_it_gave_up(name: str, tmp_path: Path, run_worker: Any) -> None:
    with fresh_app(name, tmp_path) as app:

        @app.task(retry=RetryPolicy(max_attempts=2, base=0.01, max_delay=0.01))
        def spent() -> None:
            raise ConnectionError("remote closed")

        @app.task(retry=RetryPolicy(max_attempts=5, give_up_on=(PermissionError,)))
        def refused() -> None:
            raise PermissionError("no access")

        @app.task(retry=RetryPolicy(max_attempts=5, retry_on=(TimeoutError,)))
        def picky() -> None:
            raise KeyError("sku")

        @app.task(max_throttles=1)
        def throttled() -> None:
            raise RateLimited(retry_after=0.01)

        @app.task
        def unstorable() -> object:
            return {1, 2}

        jobs = {f.__name__: f.enqueue() for f in (spent, refused, picky, throttled, unstorable)}
        with run_worker(app, concurrency=4, idle_wait=0.1):
            wait_for(lambda: all(j.status() == "dead" for j in jobs.values()), what="every job to die")
        reasons = {n: gave_up(j.info()) for n, j in jobs.items()}
        assert reasons["spent"] == "attempts spent (2/2)"
        assert (
            reasons["refused"]
            == "PermissionError matches the task's give_up_on (PermissionError): not retried"
        )
        assert reasons["picky"] == "KeyError is not in the task's retry_on (TimeoutError): not retried"
        assert reasons["throttled"] == "throttled more than max_throttles (1) times"
        assert reasons["unstorable"] == "the return value cannot be stored (not JSON, or too large)"

        shown = CliRunner().invoke(main, ["dead", "show", app.url, jobs["refused"].id])
        assert shown.exit_code == 0, shown.output
        assert "gave up: PermissionError matches the task's give_up_on" in shown.output


def test_a_job_buried_before_reasons_were_recorded_is_explained(app, run_worker: Any) -> None:
    @app.task(retry=RetryPolicy(max_attempts=1))
    def once() -> None:
        raise ValueError("x")

    job = once.enqueue()
    with run_worker(app, idle_wait=0.1):
        wait_for(lambda: job.status() == "dead", what="the job to die")
    info = job.info()
    older = info.errors[-1].copy()
    del older["gave_up"]
    assert gave_up(
        type(info)(**{**{f: getattr(info, f) for f in info.__struct_fields__}, "errors": [older]})
    ) == ("attempts spent (1/1)")


def test_a_requested_retry_is_logged_at_info_and_an_unstorable_result_as_an_error(
    app, run_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="sync.poll", retry=RetryPolicy(max_attempts=3))
    def poll() -> None:
        if current_job().attempt < 2:
            raise Retry(delay=0.01, reason="upstream not ready")

    @app.task(name="sync.export", retry=RetryPolicy(max_attempts=3))
    def export() -> object:
        return object()

    caplog.set_level(logging.INFO, logger="conveyor.worker")
    a, b = poll.enqueue(), export.enqueue()
    with run_worker(app, idle_wait=0.1):
        wait_for(lambda: a.status() == "succeeded" and b.status() == "dead", what="both outcomes")
    retried = [r for r in caplog.records if a.id in r.getMessage()]
    assert [(r.levelno, r.getMessage().split(": ", 1)[0]) for r in retried] == [
        (logging.INFO, f"job {a.id} sync.poll attempt 1/3 asked for a retry")
    ]
    assert "upstream not ready (retry in 0.01 s)" in retried[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and a.id in r.getMessage()]
    (died,) = [r for r in caplog.records if b.id in r.getMessage()]
    assert died.levelno == logging.ERROR
    assert (
        f"job {b.id} sync.export attempt 1/3 failed: its return value cannot be stored" in died.getMessage()
    )
    assert "object is not JSON-serializable" in died.getMessage()
