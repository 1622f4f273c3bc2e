"""Shared fixtures: a real Worker run in a background thread against a real SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.worker import Worker, WorkerConfig


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Conveyor]:
    application = Conveyor(f"sqlite:///{tmp_path}/worker.db")
    yield application
    application.close()


@pytest.fixture
def run_worker() -> Iterator[Callable[..., contextlib.AbstractContextManager[Worker]]]:
    """``with run_worker(app, concurrency=4) as worker:`` serves until the block ends."""

    @contextlib.contextmanager
    def start(app: Conveyor, **options: Any) -> Iterator[Worker]:
        options.setdefault("queues", ["default"])
        worker = Worker(app, WorkerConfig(**options))
        loop_box: list[asyncio.AbstractEventLoop] = []
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            loop_box.append(asyncio.get_running_loop())
            ready.set()
            await worker.run()

        def target() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:
                failure.append(exc)
                ready.set()

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        ready.wait(5)
        try:
            yield worker
        finally:
            if loop_box:
                loop_box[0].call_soon_threadsafe(worker.stop)
            thread.join(30)
            assert not thread.is_alive(), "worker did not stop"
            if failure:
                raise failure[0]

    yield start
