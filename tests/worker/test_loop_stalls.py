"""An async task that blocks the event loop is named in a warning while it blocks, and again
past the lease; a well-behaved async task raises none."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from waiting import wait_for

from conveyor import Conveyor


def test_an_async_task_blocking_the_loop_is_named(
    app: Conveyor, run_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="reports.render")
    async def render(n: int) -> int:
        time.sleep(1.6)  # a blocking call in an async task
        return n

    @app.task(name="reports.fetch")
    async def fetch(n: int) -> int:
        await asyncio.sleep(0.01)
        return n

    caplog.set_level(logging.INFO, logger="conveyor.worker")
    with run_worker(app, lease=1.2, heartbeat=0.3, concurrency=4):
        polite = fetch.enqueue(1)
        assert polite.result(timeout=10) == 1
        assert not [r for r in caplog.records if "blocked the event loop" in r.getMessage()]
        job = render.enqueue(2)
        wait_for(
            lambda: [
                r
                for r in caplog.records
                if "blocked the event loop for" in r.getMessage() and "in all" in r.getMessage()
            ],
            what="the end of the stall",
        )
    messages = [
        (r.levelno, r.getMessage()) for r in caplog.records if "blocked the event loop" in r.getMessage()
    ]
    first, past, ended = messages
    assert first[0] == logging.WARNING
    assert first[1].startswith(f"async task reports.render (job {job.id}) has blocked the event loop for 1.")
    assert "asyncio.to_thread" in first[1]
    assert past[0] == logging.ERROR and "past the lease (1 s)" in past[1]
    assert ended[0] == logging.WARNING and ended[1].startswith(
        f"async task reports.render (job {job.id}) blocked"
    )
