"""Running one delivery: decode, call the function, turn what happened into an Outcome."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import queue
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from conveyor import context, serializer
from conveyor import hooks as _hooks
from conveyor import progress as _progress
from conveyor.app import Conveyor, Task
from conveyor.errors import RateLimited, Retry, SerializationError
from conveyor.records import Delivery, Outcome, Progress
from conveyor.redact import Redactor

log = logging.getLogger("conveyor.worker")


class TaskTimeout(TimeoutError):
    """An attempt ran longer than its task's timeout."""


def error_record(
    delivery: Delivery, worker: str, exc: BaseException | None, type_: str, message: str
) -> dict[str, Any]:
    """The stored record of a failed attempt."""
    tb = "".join(traceback.format_exception(exc)) if exc is not None else None
    return {
        "attempt": delivery.attempt,
        "type": type_,
        "message": message[:2000],
        "traceback": tb[-20000:] if tb else None,
        "worker": worker,
        "at": time.time(),
    }


def failure(
    delivery: Delivery, worker: str, exc: BaseException, task: Task[Any, Any] | None, rng: random.Random
) -> Outcome:
    """Retry or bury a failed attempt according to the task's retry policy."""
    record = error_record(delivery, worker, exc, type(exc).__qualname__, str(exc) or repr(exc))
    if isinstance(exc, RateLimited) and task is not None:
        if delivery.throttled < task.max_throttles:
            return Outcome(delivery.id, delivery.token, "throttled", delay=exc.retry_after, error=record)
        record["message"] = f"throttled {delivery.throttled + 1} times (max_throttles {task.max_throttles})"
        return Outcome(delivery.id, delivery.token, "dead", error=record)
    last = delivery.attempt >= delivery.max_attempts
    if task is None or last:
        return Outcome(delivery.id, delivery.token, "dead", error=record)
    if isinstance(exc, Retry):
        delay = exc.delay if exc.delay is not None else task.retry.backoff(delivery.attempt, rng)
        return Outcome(delivery.id, delivery.token, "retry", delay=delay, error=record)
    if not task.retry.retries(exc):
        return Outcome(delivery.id, delivery.token, "dead", error=record)
    return Outcome(
        delivery.id, delivery.token, "retry", delay=task.retry.backoff(delivery.attempt, rng), error=record
    )


def bury(delivery: Delivery, worker: str, type_: str, message: str) -> Outcome:
    """Send a delivery that must never run (unknown task, undecodable payload) to the DLQ."""
    return Outcome(
        delivery.id, delivery.token, "dead", error=error_record(delivery, worker, None, type_, message)
    )


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    """Ask a thread to raise ``exc_type`` at its next Python bytecode (not inside a C call)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


class _Run:
    """One delivery in flight: who runs it, and whether its outcome has been taken."""

    __slots__ = ("began", "delivery", "future", "taken", "task", "thread", "timer")

    def __init__(self, delivery: Delivery, task: Task[Any, Any] | None) -> None:
        self.delivery = delivery
        self.task = task
        self.began = time.perf_counter()
        self.thread: int | None = None
        #: Set once, under the runner's lock, by whoever reports the outcome (the run itself, its
        #: timeout, or a graceful stop abandoning it); any later outcome is discarded.
        self.taken = False
        self.timer: asyncio.TimerHandle | None = None
        self.future: asyncio.Task[None] | None = None


def _taken(run: _Run) -> bool:
    """Whether ``run``'s outcome was reported already (read again: another thread may set it)."""
    return run.taken


#: Called on the event loop with outcomes that finished together: (delivery, outcome, seconds run).
Finished = Callable[[list[tuple[Delivery, Outcome, float]]], None]


class Runner:
    """Runs deliveries of one application and hands their outcomes back in batches.

    Async tasks run as asyncio tasks on the worker's loop. Sync tasks run on task threads fed
    through a queue: no future per task, and one loop wake-up for every batch of outcomes that
    finished together, which is what makes a no-op task cost tens of microseconds, not hundreds.
    A thread stuck in a timed-out call is not waited for: a new thread takes its place, and
    whichever thread ends a run while there are more than ``threads`` (and more than the runs
    assigned) exits, so the count shrinks back once the stuck calls return.
    """

    def __init__(self, app: Conveyor, worker: str, finished: Finished, threads: int = 1) -> None:
        self.app = app
        self._size = threads
        self.worker = worker
        self.rng = random.Random()
        self._finished_cb = finished
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: queue.SimpleQueue[_Run | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._assigned = 0  # sync runs handed to threads and not yet returned by them
        self._done: list[tuple[Delivery, Outcome, float]] = []
        self._poked = False
        #: Runs not yet collected, by (job id, token): a job leased again here after its lease
        #: was lost has a run per token, and each settles only its own.
        self._runs: dict[tuple[str, int], _Run] = {}
        #: The application's hooks as read when the worker starts (docs/hooks.md).
        self._hooks = _hooks.Hooks(app.hooks)
        self._prepare = (
            (lambda messages: _hooks.prepared(app.hooks, messages))
            if _hooks.overriding(app.hooks, "enqueue")
            else None
        )
        self._reporter: _progress.Reporter | None = None

    # -- on the event loop -----------------------------------------------------------------

    def start(self, delivery: Delivery) -> None:
        """Begin running ``delivery``; its outcome arrives later through ``finished``."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        task = self.app.tasks.get(delivery.task)
        run = _Run(delivery, task)
        self._runs[delivery.id, delivery.token] = run
        if task is None:
            log.error("job %s: unknown task %r, moved to the dead letter queue", delivery.id, delivery.task)
            self._complete(
                run,
                bury(delivery, self.worker, "UnknownTask", f"unknown task {delivery.task!r}: not registered"),
            )
        elif task.is_async:
            run.future = self._loop.create_task(self._run_async(run, task))
        else:
            if task.timeout is not None:
                run.timer = self._loop.call_later(task.timeout, self._timed_out, run, task)
            with self._lock:
                self._assigned += 1
                grow = self._assigned > self._threads
                if grow:
                    self._threads += 1
            if grow:
                threading.Thread(
                    target=self._serve, name=f"conveyor-task-{self._threads}", daemon=True
                ).start()
            self._queue.put(run)

    def abandon(self, leases: Iterable[tuple[str, int]]) -> None:
        """Give up on runs (by job id and token) still going at the end of a graceful stop: their
        outcomes are discarded."""
        with self._lock:
            for lease in leases:
                run = self._runs.pop(lease, None)
                if run is None:
                    continue
                run.taken = True
                if run.future is not None:
                    run.future.cancel()
                if run.timer is not None:
                    run.timer.cancel()

    def shutdown(self) -> None:
        """Let idle task threads exit; threads still running are abandoned, not joined."""
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)

    def _collect(self) -> None:
        with self._lock:
            batch, self._done = self._done, []
            self._poked = False
        for delivery, _, _ in batch:
            run = self._runs.pop((delivery.id, delivery.token), None)
            if run is not None and run.timer is not None:
                run.timer.cancel()
        if batch:
            self._finished_cb(batch)

    def _timed_out(self, run: _Run, task: Task[Any, Any]) -> None:
        """A sync run passed its timeout: fail the attempt now, and interrupt its thread at its
        next Python instruction (a blocking C call is not interrupted until it returns)."""
        if run.taken:
            return
        exc = TaskTimeout(f"{task.name} ran longer than its timeout of {task.timeout} s")
        self._complete(run, self._failed(run.delivery, task, exc), interrupt=True)

    async def _run_async(self, run: _Run, task: Task[Any, Any]) -> None:
        self._complete(run, await self._call_async(run.delivery, task))

    async def _call_async(self, delivery: Delivery, task: Task[Any, Any]) -> Outcome:
        try:
            args, kwargs = self._decode(delivery)
        except SerializationError as exc:
            return self._malformed(delivery, exc)
        ctx = context.JobContext(delivery, self.worker, self._prepare, self._report_progress)
        token = context.bind(ctx)
        try:
            if self._hooks.run:
                value = await self._await_hooked(ctx, task, args, kwargs)
            else:
                value = await self._await(task, args, kwargs)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure of user code is an outcome
            return ctx.failure or self._failed(delivery, task, exc, ctx)
        finally:
            context.unbind(token)
        return ctx.failure or self._succeeded(delivery, task, ctx, value)

    async def _await(self, task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
        coro = task.fn(*args, **kwargs)
        if task.timeout is None:
            return await coro
        try:
            return await asyncio.wait_for(coro, task.timeout)
        except TimeoutError:
            raise TaskTimeout(f"{task.name} ran longer than its timeout of {task.timeout} s") from None

    async def _await_hooked(
        self, ctx: context.JobContext, task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        """The task inside the run hooks; a failure's outcome is decided inside them too (so the
        retry and dead hooks run within, e.g., a hook's span) before they see the exception."""
        value = None
        with contextlib.ExitStack() as stack:
            for hook in self._hooks.run:
                stack.enter_context(hook.run(ctx))
            try:
                value = await self._await(task, args, kwargs)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                ctx.failure = self._failed(ctx.delivery, task, exc, ctx)
                raise
        return value  # None if a hook suppressed the exception: ctx.failure stands

    # -- on a task thread ------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            run = self._queue.get()
            if run is None:
                return
            try:
                self._run_sync(run)
            except TaskTimeout:
                pass  # a timeout that landed just after its run ended; the timeout was reported
            finally:
                with self._lock:
                    self._assigned -= 1
                    surplus = self._threads > max(self._size, self._assigned)
                    if surplus:
                        self._threads -= 1
            if surplus:
                return

    def _run_sync(self, run: _Run) -> None:
        with self._lock:
            if run.taken:
                return
            run.thread = threading.get_ident()
        task, delivery = run.task, run.delivery
        assert task is not None
        try:
            args, kwargs = self._decode(delivery)
        except SerializationError as exc:
            self._complete(run, self._malformed(delivery, exc))
            return
        ctx = context.JobContext(delivery, self.worker, self._prepare, self._report_progress)
        token = context.bind(ctx)
        try:
            value = (
                self._call_hooked(run, ctx, task, args, kwargs)
                if self._hooks.run
                else task.fn(*args, **kwargs)
            )
        except BaseException as exc:  # noqa: BLE001 - every failure of user code is an outcome
            if _taken(run):  # timed out: the timeout was reported, this is its interrupt landing
                return
            outcome = ctx.failure or self._failed(delivery, task, exc, ctx)
        else:
            outcome = ctx.failure or self._succeeded(delivery, task, ctx, value)
        finally:
            context.unbind(token)
        self._complete(run, outcome)

    def _call_hooked(
        self,
        run: _Run,
        ctx: context.JobContext,
        task: Task[Any, Any],
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        """The task inside the run hooks (see _await_hooked)."""
        value = None
        with contextlib.ExitStack() as stack:
            for hook in self._hooks.run:
                stack.enter_context(hook.run(ctx))
            try:
                value = task.fn(*args, **kwargs)
            except BaseException as exc:
                if not _taken(run):
                    ctx.failure = self._failed(ctx.delivery, task, exc, ctx)
                raise
        return value  # None if a hook suppressed the exception: ctx.failure stands

    # -- anywhere ----------------------------------------------------------------------------

    def _complete(self, run: _Run, outcome: Outcome, interrupt: bool = False) -> None:
        """Report ``run``'s outcome unless someone already did; wake the loop once per batch.
        With ``interrupt``, the thread still running it gets a TaskTimeout raised in it."""
        with self._lock:
            if run.taken:
                return
            run.taken = True
            if interrupt and run.thread is not None:
                _raise_in_thread(run.thread, TaskTimeout)
            self._done.append((run.delivery, outcome, time.perf_counter() - run.began))
            poke = not self._poked
            self._poked = True
        if poke:
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop closed: an abandoned run ended late
                self._loop.call_soon_threadsafe(self._collect)

    def _report_progress(self, job_id: str, token: int, progress: Progress) -> None:
        """A run's progress report, from its thread or the loop; the reporter is made at the first
        (a worker whose tasks report none never has one)."""
        if self._reporter is None:
            assert self._loop is not None
            with self._lock:
                if self._reporter is None:
                    self._reporter = _progress.Reporter(self.app.broker, self._loop)
        self._reporter.report(job_id, token, progress)

    def _decode(self, delivery: Delivery) -> tuple[list[Any], dict[str, Any]]:
        return serializer.decode_args(delivery.payload, self.app.max_payload)

    def _malformed(self, delivery: Delivery, exc: SerializationError) -> Outcome:
        log.error("job %s: %s; moved to the dead letter queue", delivery.id, exc)
        return bury(delivery, self.worker, "MalformedPayload", str(exc))

    def _failed(
        self,
        delivery: Delivery,
        task: Task[Any, Any],
        exc: BaseException,
        ctx: context.JobContext | None = None,
    ) -> Outcome:
        outcome = failure(delivery, self.worker, exc, task, self.rng)
        if self._hooks.retry or self._hooks.dead:
            job = ctx or context.JobContext(delivery, self.worker)
            self._hooks.failed(job, exc, outcome.kind, outcome.delay)
        then = {"dead": "dead letter queue", "throttled": f"throttled for {outcome.delay:.2f} s"}.get(
            outcome.kind, f"retry in {outcome.delay:.2f} s"
        )
        redactor = Redactor()  # the message may repeat a secret argument: logs get it masked
        redactor.arguments(delivery.payload, task.signature)
        log.warning(
            "job %s %s attempt %d/%d failed: %s: %s (%s)",
            delivery.id,
            task.name,
            delivery.attempt,
            delivery.max_attempts,
            type(exc).__name__,
            redactor.line(str(exc)),
            then,
        )
        return outcome

    def _succeeded(
        self, delivery: Delivery, task: Task[Any, Any], ctx: context.JobContext, value: Any
    ) -> Outcome:
        limit = task.max_result or self.app.max_result
        try:
            result = (
                None if value is None else serializer.encode_value(value, f"{task.name}: return value", limit)
            )
        except SerializationError as exc:  # ResultTooLarge too: the same value would fail again
            log.error("job %s: %s; moved to the dead letter queue", delivery.id, exc)
            return Outcome(
                delivery.id,
                delivery.token,
                "dead",
                error=error_record(delivery, self.worker, exc, type(exc).__name__, str(exc)),
            )
        return Outcome(
            delivery.id,
            delivery.token,
            "succeeded",
            result=result,
            effects=tuple(ctx.effects),
            enqueues=tuple(ctx.enqueues),
        )
