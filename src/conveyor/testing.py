"""Run an application's tasks inside a test: a real worker in the test's process, until drained.

``drain(app)`` starts a :class:`~conveyor.worker.Worker` on a thread of the calling process, with
``burst`` set (see ``WorkerConfig.burst``), and returns what ran once nothing is left to run. It
takes no shortcut: arguments are encoded at enqueue and decoded by the worker, results encoded
into the store, retries scheduled by the task's policy and run when due, only registered tasks
run. A bug that would fail in production (a result that is not JSON, an unknown task, a missing
argument) fails the same way here.

With ``sqlite:///:memory:`` (see :func:`isolated`) the store is in the test's memory; any other
store works too (a worker of this process serves it like a worker process would).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from conveyor.app import Conveyor
from conveyor.records import Delivery, JobInfo
from conveyor.worker.loop import Worker, WorkerConfig

__all__ = ["Drained", "TasksFailed", "drain", "isolated"]


@dataclass(frozen=True)
class Drained:
    """What a :func:`drain` ran: each job that ran at least once, as the store has it at the end."""

    #: Every job that ran, in the order its first run ended.
    jobs: list[JobInfo] = field(default_factory=list)

    def _in(self, state: str) -> list[JobInfo]:
        return [j for j in self.jobs if j.state == state]

    @property
    def succeeded(self) -> list[JobInfo]:
        return self._in("succeeded")

    @property
    def dead(self) -> list[JobInfo]:
        """Jobs that ran and ended in the dead letter queue (attempts spent, or not retryable)."""
        return self._in("dead")

    @property
    def scheduled(self) -> list[JobInfo]:
        """Jobs that ran, failed and wait for a retry due later than the drain's ``wait``."""
        return self._in("scheduled")

    def of(self, task: Any) -> list[JobInfo]:
        """The jobs of one task (the task object or its registered name)."""
        name = task if isinstance(task, str) else task.name
        return [j for j in self.jobs if j.task == name]


class TasksFailed(AssertionError):
    """Jobs that a :func:`drain` ran ended in the dead letter queue; the message carries the last
    error of each, with its traceback."""

    def __init__(self, drained: Drained) -> None:
        self.drained = drained
        parts = [f"{len(drained.dead)} job(s) ended in the dead letter queue:"]
        for job in drained.dead:
            last = job.errors[-1] if job.errors else {}
            parts.append(
                f"\n--- {job.task} (job {job.id}, attempt {job.attempt}):"
                f" {last.get('type')}: {last.get('message')}\n{last.get('traceback') or ''}".rstrip()
            )
        super().__init__("\n".join(parts))


def drain(
    app: Conveyor,
    *,
    queues: Iterable[str] | None = None,
    timeout: float = 30.0,
    wait: float = 5.0,
    concurrency: int = 4,
    check: bool = True,
) -> Drained:
    """Run ``app``'s jobs with a real worker in this process until none is left to run.

    Returns once no job of ``queues`` is ready or running here and none is scheduled within
    ``wait`` seconds (so retries with short delays run; a job delayed further is left).

    Args:
        queues: queues served; defaults to every queue of the app's registered tasks.
        timeout: seconds the drain may take; past them the worker stops and TimeoutError says
            what was left.
        wait: seconds ahead a scheduled job (a delay, a retry's backoff) is waited for.
        concurrency: tasks run at once.
        check: raise :class:`TasksFailed` if a job that ran ended in the dead letter queue.
    """
    served = list(dict.fromkeys(queues if queues is not None else _queues(app)))
    ran: dict[str, None] = {}

    def observe(ended: list[tuple[Delivery, str]]) -> None:
        for delivery, _ in ended:
            ran.setdefault(delivery.id)

    config = WorkerConfig(
        queues=served,
        concurrency=concurrency,
        burst=True,
        burst_wait=wait,
        grace=5.0,
        worker_id=f"drain:{os.getpid()}:{os.urandom(3).hex()}",
    )
    worker = Worker(app, config, observe=observe)
    failure: list[BaseException] = []
    loop_box: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loop_box.append(asyncio.get_running_loop())
        await worker.run()

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="conveyor-drain", daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(timeout)
    timed_out = thread.is_alive()
    if timed_out and loop_box:
        loop_box[0].call_soon_threadsafe(worker.stop)
        thread.join(config.grace + 10)
    if failure:
        raise failure[0]
    drained = Drained([j for j in (app.broker.get(job_id) for job_id in ran) if j is not None])
    if timed_out:
        left = {
            s.queue: {k: s.total(k) for k in ("ready", "scheduled", "running")}
            for s in app.broker.stats(served)
        }
        raise TimeoutError(
            f"drain did not finish within {timeout:g} s ({time.monotonic() - started:.1f} s):"
            f" {len(drained.jobs)} job(s) ran; left in the queues: {left}"
        )
    if check and drained.dead:
        raise TasksFailed(drained)
    return drained


def _queues(app: Conveyor) -> list[str]:
    return sorted({t.queue for t in app.tasks.values()} or {"default"})


@contextlib.contextmanager
def isolated(app: Conveyor, url: str | None = None) -> Iterator[Conveyor]:
    """Point ``app`` at a fresh store for the block (default: a new ``sqlite:///:memory:``), then
    back at its own. Its tasks and settings stay; jobs enqueued inside go to the fresh store."""
    own = app.url
    app.close()
    app.url = url or f"sqlite:///:memory:?name=test-{os.urandom(6).hex()}"
    try:
        yield app
    finally:
        app.close()
        app.url = own
