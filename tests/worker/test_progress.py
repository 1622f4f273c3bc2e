"""Progress reported by a running task through a real worker (docs/hooks.md): throttled writes,
the latest report always stored."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from waiting import wait_for

from conveyor import ConfigurationError, Conveyor, current_job
from conveyor.records import Progress


def test_the_latest_progress_is_stored_in_few_writes(app: Conveyor, run_worker) -> None:
    release = threading.Event()
    writes: list[int] = []
    broker = app.broker
    original = broker.set_progress

    def counted(updates: Any, now: float | None = None) -> int:
        writes.append(len(updates))
        return original(updates, now)

    broker.set_progress = counted  # type: ignore[method-assign]  # the real write, counted

    @app.task
    def resize(n: int) -> None:
        for i in range(1, n + 1):
            current_job().progress(i / n, f"resized {i} of {n}")
        release.wait(10)

    with run_worker(app):
        job = resize.enqueue(2000)
        wait_for(lambda: job.progress() == Progress(1.0, "resized 2000 of 2000"), 10, "the last report")
        assert job.status() == "running"
        release.set()
        job.result(timeout=10)
    assert 1 <= len(writes) <= 10, writes


def test_an_async_task_reports_progress(app: Conveyor, run_worker) -> None:
    go = threading.Event()

    @app.task
    async def crawl() -> None:
        current_job().progress(0.42, "42 of 100 pages")
        while not go.is_set():
            await asyncio.sleep(0.01)

    with run_worker(app):
        job = crawl.enqueue()
        wait_for(lambda: job.progress() == Progress(0.42, "42 of 100 pages"), 10, "the report")
        go.set()
        job.result(timeout=10)
    assert job.progress() == Progress(0.42, "42 of 100 pages")


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_a_bad_report_fails_where_it_is_made(app: Conveyor, run_worker, value: Any) -> None:
    @app.task
    def bad() -> str:
        try:
            current_job().progress(value)
        except ConfigurationError as exc:
            return str(exc)
        return "accepted"

    with run_worker(app):
        assert "from 0 to 1" in bad.enqueue().result(timeout=10)
