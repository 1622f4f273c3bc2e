"""Running one delivery: decode, call the function, turn what happened into an Outcome."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from conveyor import context, serializer
from conveyor.app import Conveyor, Task
from conveyor.errors import Retry, SerializationError
from conveyor.records import Delivery, Outcome
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


class Runner:
    """Runs deliveries of one application: async tasks on the loop, sync tasks in a thread pool."""

    def __init__(self, app: Conveyor, worker: str, threads: int) -> None:
        self.app = app
        self.worker = worker
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="conveyor-task")
        self.rng = random.Random()

    async def run(self, delivery: Delivery, on_started: Callable[[], None] | None = None) -> Outcome:
        """Run one delivery to an outcome; never raises except on cancellation."""
        task = self.app.tasks.get(delivery.task)
        if task is None:
            log.error("job %s: unknown task %r, moved to the dead letter queue", delivery.id, delivery.task)
            return bury(
                delivery, self.worker, "UnknownTask", f"unknown task {delivery.task!r}: not registered"
            )
        try:
            args, kwargs = serializer.decode_args(delivery.payload, self.app.max_payload)
        except SerializationError as exc:
            log.error("job %s: %s; moved to the dead letter queue", delivery.id, exc)
            return bury(delivery, self.worker, "MalformedPayload", str(exc))
        ctx = context.JobContext(delivery, self.worker)
        try:
            if task.is_async:
                value = await self._run_async(task, ctx, args, kwargs)
            else:
                value = await self._run_sync(task, ctx, args, kwargs)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure of user code is an outcome
            outcome = failure(delivery, self.worker, exc, task, self.rng)
            then = "dead letter queue" if outcome.kind == "dead" else f"retry in {outcome.delay:.2f} s"
            redactor = Redactor()  # the message may repeat a secret argument: logs get it masked
            redactor.arguments(delivery.payload, task.signature)
            log.warning(
                "job %s %s attempt %d/%d failed: %s: %s (%s)",
                delivery.id,
                task.name,
                delivery.attempt,
                delivery.max_attempts,
                type(exc).__name__,
                redactor.text(str(exc)),
                then,
            )
            return outcome
        try:
            result = None if value is None else serializer.encode_value(value, f"{task.name}: return value")
        except SerializationError as exc:
            return Outcome(
                delivery.id,
                delivery.token,
                "dead",
                error=error_record(delivery, self.worker, exc, "SerializationError", str(exc)),
            )
        return Outcome(
            delivery.id,
            delivery.token,
            "succeeded",
            result=result,
            effects=tuple(ctx.effects),
            enqueues=tuple(ctx.enqueues),
        )

    async def _run_async(
        self, task: Task[Any, Any], ctx: context.JobContext, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        token = context.bind(ctx)
        try:
            coro = task.fn(*args, **kwargs)
            if task.timeout is None:
                return await coro
            try:
                return await asyncio.wait_for(coro, task.timeout)
            except TimeoutError:
                raise TaskTimeout(f"{task.name} ran longer than its timeout of {task.timeout} s") from None
        finally:
            context.unbind(token)

    async def _run_sync(
        self, task: Task[Any, Any], ctx: context.JobContext, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        thread_id: list[int] = []

        def call() -> Any:
            thread_id.append(threading.get_ident())
            token = context.bind(ctx)
            try:
                return task.fn(*args, **kwargs)
            finally:
                context.unbind(token)

        future = asyncio.get_running_loop().run_in_executor(self.pool, call)
        if task.timeout is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), task.timeout)
        except TimeoutError:
            if thread_id:
                _raise_in_thread(thread_id[0], TaskTimeout)
            future.add_done_callback(lambda f: f.exception())  # the late result is discarded
            raise TaskTimeout(f"{task.name} ran longer than its timeout of {task.timeout} s") from None

    def shutdown(self) -> None:
        """Stop accepting work; threads still running are abandoned, not joined."""
        self.pool.shutdown(wait=False, cancel_futures=True)
