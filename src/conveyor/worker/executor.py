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
from conveyor.brokers.base import CORRUPT_TASK
from conveyor.errors import JobCancelled, RateLimited, Retry, SerializationError, Snooze
from conveyor.records import Delivery, Outcome, Progress
from conveyor.redact import Redactor, printable

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
    """Retry or bury a failed attempt according to the task's retry policy. A buried attempt's
    record says why in ``gave_up`` (``conveyor dead show`` prints it)."""
    record = error_record(delivery, worker, exc, type(exc).__qualname__, str(exc) or repr(exc))
    if isinstance(exc, Snooze) and task is not None:
        record["message"] = f"snoozed more than max_snoozes ({task.max_snoozes}) times"
        record["traceback"] = None
        return Outcome(
            delivery.id,
            delivery.token,
            "snoozed",
            delay=exc.delay,
            error=record,
            max_snoozes=task.max_snoozes,
        )
    if isinstance(exc, RateLimited) and task is not None:
        if delivery.throttled < task.max_throttles:
            return Outcome(delivery.id, delivery.token, "throttled", delay=exc.retry_after, error=record)
        record["message"] = f"throttled {delivery.throttled + 1} times (max_throttles {task.max_throttles})"
        record["gave_up"] = f"throttled more than max_throttles ({task.max_throttles}) times"
        return Outcome(delivery.id, delivery.token, "dead", error=record)
    last = delivery.attempt >= delivery.max_attempts
    if task is None:
        record["gave_up"] = f"unknown task {delivery.task!r}: not registered in this worker"
        return Outcome(delivery.id, delivery.token, "dead", error=record)
    if last:
        record["gave_up"] = f"attempts spent ({delivery.attempt}/{delivery.max_attempts})"
        return Outcome(delivery.id, delivery.token, "dead", error=record)
    if isinstance(exc, Retry):
        delay = exc.delay if exc.delay is not None else task.retry.backoff(delivery.attempt, rng)
        return Outcome(delivery.id, delivery.token, "retry", delay=delay, error=record)
    if not task.retry.retries(exc):
        record["gave_up"] = _not_retried(exc, task)
        return Outcome(delivery.id, delivery.token, "dead", error=record)
    return Outcome(
        delivery.id, delivery.token, "retry", delay=task.retry.backoff(delivery.attempt, rng), error=record
    )


def _not_retried(exc: BaseException, task: Task[Any, Any]) -> str:
    """Why the retry policy of ``task`` does not retry ``exc``."""
    kind = type(exc).__qualname__
    policy = task.retry
    if isinstance(exc, policy.give_up_on):
        names = ", ".join(k.__qualname__ for k in policy.give_up_on)
        return f"{kind} matches the task's give_up_on ({names}): not retried"
    names = ", ".join(k.__qualname__ for k in policy.retry_on)
    return f"{kind} is not in the task's retry_on ({names}): not retried"


#: Why a delivery buried without running gave up, by its error type.
_BURIED = {
    "UnknownTask": "the task is not registered in the worker that took it",
    "MalformedPayload": "the payload does not decode: no attempt can run it",
}


def bury(delivery: Delivery, worker: str, type_: str, message: str) -> Outcome:
    """Send a delivery that must never run (unknown task, undecodable payload) to the DLQ."""
    record = error_record(delivery, worker, None, type_, message)
    if type_ in _BURIED:
        record["gave_up"] = _BURIED[type_]
    return Outcome(delivery.id, delivery.token, "dead", error=record)


#: An unknown task's job is put back 1 s after its first delivery, then after twice as long each
#: time, at most UNKNOWN_CAP seconds at a time (see unknown_delay).
UNKNOWN_CAP = 60.0
#: Most task names a runner logs a warning for (a job of a name it has warned of logs at DEBUG).
_WARNED_MAX = 1000


def unknown_delay(deferred: int, window: float) -> float | None:
    """Seconds to put back a job of a task this worker does not know, deferred ``deferred`` times
    already; None once those deferrals span ``window`` seconds (then it is buried). The delays
    are 1, 2, 4 ... 32, then 60 s: a 10-minute window is 15 deferrals, each a store round trip."""
    n = max(deferred, 0)
    spent = 2.0**n - 1 if n <= 6 else 63.0 + UNKNOWN_CAP * (n - 6)
    if spent >= window:
        return None
    return min(2.0 ** min(n, 6), UNKNOWN_CAP, window - spent)


def unreadable(name: str) -> bool:
    """A task name no application can register: a record that did not parse, text that was not
    UTF-8 (read back with U+FFFD), a name no enqueue accepts. Such a job is buried at once."""
    return name == CORRUPT_TASK or not name or len(name) > 255 or "\ufffd" in name or not name.isprintable()


def cancelled(delivery: Delivery, worker: str, message: str) -> Outcome:
    """The outcome of a run a cancel request stopped (docs/job-control.md)."""
    return Outcome(
        delivery.id,
        delivery.token,
        "cancelled",
        error=error_record(delivery, worker, None, JobCancelled.__name__, message),
    )


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    """Ask a thread to raise ``exc_type`` at its next Python bytecode (not inside a C call)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


class _Run:
    """One delivery in flight: who runs it, and whether its outcome has been taken."""

    __slots__ = ("began", "cancelling", "ctx", "delivery", "future", "taken", "task", "thread", "timer")

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
        #: The task's context once it runs (a sync task reads ``cancelled`` from it).
        self.ctx: context.JobContext | None = None
        #: Set (on the loop) once a cancel request reached this run: however it ends, its
        #: outcome is ``cancelled``.
        self.cancelling = False


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

    def __init__(
        self,
        app: Conveyor,
        worker: str,
        finished: Finished,
        threads: int = 1,
        unknown_window: float = 600.0,
    ) -> None:
        self.app = app
        #: Seconds a job of a task not registered here is put back for another worker.
        self.unknown_window = unknown_window
        self._warned: set[str] = set()
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
            self._complete(run, self._unknown(delivery))
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

    def cancel(self, lease: tuple[str, int], grace: float) -> bool:
        """A cancel request reached the run of ``lease`` (docs/job-control.md): an async task is
        cancelled on the loop now; a sync one sees ``current_job().cancelled`` and, still
        running after ``grace`` seconds, gets JobCancelled raised in its thread. False if no
        such run goes on (it ended, or was told already)."""
        run = self._runs.get(lease)
        if run is None or run.taken or run.cancelling:
            return False
        run.cancelling = True
        if run.future is not None:
            run.future.cancel()
            return True
        if run.ctx is not None:
            run.ctx.cancel_requested = True
        assert self._loop is not None
        if run.timer is not None:
            run.timer.cancel()
        run.timer = self._loop.call_later(grace, self._cancel_overdue, run, grace)
        return True

    def cancelling(self, leases: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Those of ``leases`` whose run a cancel request reached and that still go on."""
        out = []
        for lease in leases:
            run = self._runs.get(lease)
            if run is not None and run.cancelling:
                out.append(lease)
        return out

    def _cancel_overdue(self, run: _Run, grace: float) -> None:
        """A sync run did not stop within its cancel's grace: report it cancelled now and
        interrupt its thread at its next Python instruction (as a timeout does)."""
        if run.taken:
            return
        outcome = cancelled(
            run.delivery, self.worker, f"cancelled while running; stopped after its grace of {grace} s"
        )
        self._complete(run, outcome, interrupt=JobCancelled)

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
        self._complete(run, self._failed(run.delivery, task, exc), interrupt=TaskTimeout)

    async def _run_async(self, run: _Run, task: Task[Any, Any]) -> None:
        try:
            outcome = await self._call_async(run, task)
        except asyncio.CancelledError:
            if not run.cancelling:
                raise  # abandoned at a stop: nothing to report
            outcome = cancelled(run.delivery, self.worker, "cancelled while running")
        self._complete(run, outcome)

    async def _call_async(self, run: _Run, task: Task[Any, Any]) -> Outcome:
        delivery = run.delivery
        try:
            args, kwargs = self._decode(delivery, task)
        except SerializationError as exc:
            return self._malformed(delivery, exc)
        ctx = run.ctx = context.JobContext(delivery, self.worker, self._prepare, self._report_progress)
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
            except (TaskTimeout, JobCancelled):
                pass  # an interrupt that landed just after its run ended; its outcome was reported
            finally:
                with self._lock:
                    self._assigned -= 1
                    surplus = self._threads > max(self._size, self._assigned)
                    if surplus:
                        self._threads -= 1
            if surplus:
                return

    def _run_sync(self, run: _Run) -> None:
        task, delivery = run.task, run.delivery
        ctx = context.JobContext(delivery, self.worker, self._prepare, self._report_progress)
        with self._lock:
            if run.taken:
                return
            run.thread = threading.get_ident()
            run.ctx = ctx  # a cancel reaching the run from now on sets ctx.cancel_requested
            ctx.cancel_requested = run.cancelling
        assert task is not None
        try:
            args, kwargs = self._decode(delivery, task)
        except SerializationError as exc:
            self._complete(run, self._malformed(delivery, exc))
            return
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

    def _complete(self, run: _Run, outcome: Outcome, interrupt: type[BaseException] | None = None) -> None:
        """Report ``run``'s outcome unless someone already did; wake the loop once per batch.
        With ``interrupt``, the thread still running it gets that exception raised in it. A run
        a cancel request reached reports ``cancelled`` however it ended."""
        with self._lock:
            if run.taken:
                return
            run.taken = True
            if run.cancelling and outcome.kind != "cancelled":
                outcome = cancelled(
                    run.delivery, self.worker, f"cancelled while running (it ended: {outcome.kind})"
                )
            if interrupt is not None and run.thread is not None:
                _raise_in_thread(run.thread, interrupt)
            self._done.append((run.delivery, outcome, time.perf_counter() - run.began))
            poke = not self._poked
            self._poked = True
        if poke:
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop closed: an abandoned run ended late
                self._loop.call_soon_threadsafe(self._collect)

    def _unknown(self, delivery: Delivery) -> Outcome:
        """A job of a task not registered here: never run. Put back (its attempt not counted)
        for a worker that knows the task (a rolling deploy: a new producer, an old worker),
        with growing delays, until the deferrals span ``unknown_window``; then buried."""
        name = printable(delivery.task)[:200]
        names = sorted(self.app.tasks)
        registered = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        registered = registered or "none"
        delay = None if unreadable(delivery.task) else unknown_delay(delivery.throttled, self.unknown_window)
        if delay is None:
            message = f"unknown task {name!r} (registered: {registered})"
            if not unreadable(delivery.task) and self.unknown_window > 0:
                message += f"; no worker that knows it took it within {self.unknown_window:.0f} s"
            log.error("job %s: %s; moved to the dead letter queue", delivery.id, message)
            return bury(delivery, self.worker, "UnknownTask", message)
        message = (
            f"unknown task {name!r} on this worker (registered: {registered}); put back for {delay:.0f} s"
            " for a worker that knows it"
        )
        if delivery.task in self._warned or len(self._warned) >= _WARNED_MAX:
            log.debug("job %s: %s", delivery.id, message)
        else:
            self._warned.add(delivery.task)
            log.warning(
                "job %s: %s (a rolling deploy? jobs of this task are put back for up to %.0f s, then"
                " dead; this is logged once per task)",
                delivery.id,
                message,
                self.unknown_window,
            )
        record = error_record(delivery, self.worker, None, "UnknownTask", message)
        return Outcome(delivery.id, delivery.token, "throttled", delay=delay, error=record)

    def _decode(self, delivery: Delivery, task: Task[Any, Any]) -> tuple[list[Any], dict[str, Any]]:
        """The call's arguments, typed ones rebuilt from the function's annotations."""
        args, kwargs, typed = serializer.decode_call(delivery.payload, self.app.max_payload)
        if typed:
            task.types.load(args, kwargs, typed)
        return args, kwargs

    def _report_progress(self, job_id: str, token: int, progress: Progress) -> None:
        """A run's progress report, from its thread or the loop; the reporter is made at the first
        (a worker whose tasks report none never has one)."""
        if self._reporter is None:
            assert self._loop is not None
            with self._lock:
                if self._reporter is None:
                    self._reporter = _progress.Reporter(self.app.broker, self._loop)
        self._reporter.report(job_id, token, progress)

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
        if isinstance(exc, Retry) and outcome.kind == "retry":  # asked for: not a failure
            log.info(
                "job %s %s attempt %d/%d asked for a retry: %s (retry in %.2f s)",
                delivery.id,
                task.name,
                delivery.attempt,
                delivery.max_attempts,
                redactor.line(str(exc)),
                outcome.delay,
            )
            return outcome
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
        where = f"{task.name}: return value"
        try:
            if value is not None and task.types.result is not None:
                value = task.types.dump_result(value, where)
            result = None if value is None else serializer.encode_value(value, where, limit)
        except SerializationError as exc:  # ResultTooLarge too: the same value would fail again
            log.error(
                "job %s %s attempt %d/%d failed: its return value cannot be stored: %s: %s"
                " (dead letter queue: a retry would return the same)",
                delivery.id,
                task.name,
                delivery.attempt,
                delivery.max_attempts,
                type(exc).__name__,
                printable(str(exc)),
            )
            record = error_record(delivery, self.worker, exc, type(exc).__name__, str(exc))
            record["gave_up"] = "the return value cannot be stored (not JSON, or too large)"
            return Outcome(delivery.id, delivery.token, "dead", error=record)
        return Outcome(
            delivery.id,
            delivery.token,
            "succeeded",
            result=result,
            effects=tuple(ctx.effects),
            enqueues=tuple(ctx.enqueues),
        )
