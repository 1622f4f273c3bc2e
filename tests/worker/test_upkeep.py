"""Upkeep through a real worker on SQLite: a failing registry beat, failing sweeps."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import pytest
from waiting import wait_for

from conveyor import Conveyor, current_job


def test_a_failing_registry_beat_does_not_skip_the_lease_extensions(app: Conveyor, run_worker: Any) -> None:
    tokens: list[int] = []

    @app.task
    def slow() -> None:
        tokens.append(current_job().token)
        time.sleep(3.0)

    with run_worker(app, lease=1.0, heartbeat=0.2, reclaim_interval=0.2) as worker:
        job = slow.enqueue()
        wait_for(lambda: tokens, what="the run")

        def beat(*_: Any) -> None:
            raise RuntimeError("the registry is gone")

        app.broker.beat = beat  # type: ignore[method-assign]
        assert job.result(timeout=30) is None
        assert worker.counts["lost"] == 0
    assert tokens == [tokens[0]]
    assert job.info().errors == []


def test_a_failing_sweep_backs_off_and_logs_one_line_per_failure(
    app: Conveyor, run_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    failures = threading.Semaphore(6)
    reclaim = app.broker.reclaim

    def flaky(now: float | None = None) -> Any:
        if failures.acquire(blocking=False):
            raise RuntimeError("store away")
        return reclaim(now)

    app.broker.reclaim = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, "conveyor.worker"), run_worker(app, reclaim_interval=1.0):
        wait_for(lambda: failures._value == 0 and len(_retries(caplog)) == 6, what="six failures")
    assert _retries(caplog) == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert all("reclaim failed (RuntimeError: store away)" in r.getMessage() for r in _failures(caplog))
    assert all(r.exc_info is None for r in _failures(caplog))


def _failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "reclaim failed" in r.getMessage()]


def _retries(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [float(re.findall(r"retrying in ([\d.]+) s", r.getMessage())[0]) for r in _failures(caplog)]
