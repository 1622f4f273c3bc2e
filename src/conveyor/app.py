"""The application: task registry, enqueue API and configuration."""

from __future__ import annotations

import asyncio
import collections
import inspect
import math
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, ParamSpec, Protocol, TypeVar, cast, overload

from conveyor import arguments, metrics, serializer, validate
from conveyor import hooks as _hooks
from conveyor.brokers import Broker, absolute_url, open_broker, redact_url
from conveyor.errors import (
    ArgumentError,
    ConfigurationError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    QueueFull,
    SerializationError,
    UnknownTask,
)
from conveyor.ids import new_id
from conveyor.limits import MAX_THROTTLES, Limit, Limits, check_key, rule
from conveyor.periodic import CatchUp, Schedule, on_time
from conveyor.priority import DEFAULT_LEVELS, Priorities
from conveyor.records import Cancelled, JobInfo, LimitInfo, Message, Pause, Progress, Rule, State
from conveyor.retry import RetryPolicy

#: Times a job may snooze before the next snooze buries it (``@app.task(max_snoozes=...)``).
MAX_SNOOZES = 100
#: Seconds a running sync task gets to stop on its own after a cancel (``Job.cancel(grace=)``).
CANCEL_GRACE = 10.0

P = ParamSpec("P")
R = TypeVar("R")
P2 = ParamSpec("P2")
R2 = TypeVar("R2")

DEFAULT_URL = "sqlite:///conveyor.db"
#: Enqueue options; a task function may not have parameters with these names.
RESERVED = frozenset({"priority", "delay", "run_at", "key", "queue", "connection", "headers"})
MAX_KEY_LENGTH = 255
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
#: Queue names already found valid (up to 4096 of them): a message per call skips the pattern.
_valid_queues: set[str] = set()


class _Decorator(Protocol):
    """What ``@app.task(...)`` with options returns: it keeps the function's types."""

    @overload
    def __call__(self, fn: Callable[P2, Coroutine[Any, Any, R2]], /) -> AsyncTask[P2, R2]: ...

    @overload
    def __call__(self, fn: Callable[P2, R2], /) -> Task[P2, R2]: ...


class _PeriodicDecorator(Protocol):
    """What ``@app.periodic(...)`` returns: it keeps the function's result type."""

    @overload
    def __call__(self, fn: Callable[[], Coroutine[Any, Any, R2]], /) -> AsyncTask[[], R2]: ...

    @overload
    def __call__(self, fn: Callable[[], R2], /) -> Task[[], R2]: ...


class Conveyor:
    """A Conveyor application: its tasks and the store they go through.

    Args:
        url: store URL; defaults to ``$CONVEYOR_URL``, else ``sqlite:///conveyor.db``. A
            relative SQLite path is resolved against the current directory now, when the
            application is made (``app.url`` holds the absolute path).
        priorities: level names and weights, most urgent first (default high 6, normal 3, low 1).
        retry: default retry policy of tasks that do not set one.
        max_payload: largest encoded arguments accepted, in bytes (default 1 MiB).
        max_result: largest encoded return value a task may store, in bytes (default 16 MiB);
            a larger one fails the attempt with ResultTooLarge. Tasks may set their own.
        retention: seconds finished jobs, their results and idempotency keys are kept (default 24 h).
        max_queued: backpressure, by queue name: the most pending (ready or scheduled) jobs the
            queue may hold. An enqueue that would take it past that raises QueueFull and stores
            nothing of its batch. Checked by the store atomically with the insert; queues not
            named have no cap and pay nothing. A producer's own setting: configure every
            producer of a queue alike. Periodic ticks, follow-up enqueues committed with a
            task's acknowledgement, retries and replays are never refused.
        hooks: hooks (:class:`conveyor.Hook`) around enqueues and runs, the first one
            outermost; more can be appended to ``app.hooks`` before a worker starts. See
            docs/hooks.md.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        priorities: Mapping[str, int] = DEFAULT_LEVELS,
        retry: RetryPolicy | None = None,
        max_payload: int = 1 << 20,
        max_result: int = 16 << 20,
        retention: float = 86400.0,
        max_queued: Mapping[str, int] | None = None,
        hooks: Iterable[_hooks.Hook] = (),
    ) -> None:
        self.url = absolute_url(url or os.environ.get("CONVEYOR_URL") or DEFAULT_URL)
        self.priorities = Priorities(priorities)
        self.retry = retry or RetryPolicy()
        self.max_payload = max_payload
        self.max_result = _size("max_result", max_result)
        self.retention = retention
        #: Caps of pending jobs by queue (see ``max_queued`` above); empty: no queue is capped.
        self.max_queued = _caps(max_queued)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: list[Schedule] = []
        #: Hooks around enqueues and runs, in order (the first is the outermost).
        self.hooks: list[_hooks.Hook] = list(hooks)
        self._broker: Broker | None = None
        self._broker_pid = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Conveyor({redact_url(self.url)!r}, tasks={len(self.tasks)})"

    @property
    def broker(self) -> Broker:
        """The store, opened on first use in each process."""
        if self._broker is None or self._broker_pid != os.getpid():
            with self._lock:
                if self._broker is None or self._broker_pid != os.getpid():
                    self._broker = open_broker(self.url, retention=self.retention)
                    self._broker_pid = os.getpid()
        return self._broker

    def close(self) -> None:
        """Close the store's connections."""
        if self._broker is not None and self._broker_pid == os.getpid():
            self._broker.close()
        self._broker = None

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> AsyncTask[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R]) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: str | int = "normal",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        max_result: int | None = None,
        limits: Iterable[Limit] | None = None,
        max_throttles: int = MAX_THROTTLES,
        max_snoozes: int = MAX_SNOOZES,
    ) -> _Decorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: str | int = "normal",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        max_result: int | None = None,
        limits: Iterable[Limit] | None = None,
        max_throttles: int = MAX_THROTTLES,
        max_snoozes: int = MAX_SNOOZES,
    ) -> Any:
        """Register a function (sync or ``async def``) as a task.

        Args:
            name: registry name; defaults to ``module.qualname``. Workers run only registered names.
            queue: default queue of its jobs.
            priority: default priority level (name or index).
            retry: its retry policy; defaults to the application's.
            timeout: seconds an attempt may run before it fails with TimeoutError.
            max_result: largest encoded return value in bytes; defaults to the application's.
                A larger one sends the job to the dead letter queue with ResultTooLarge.
            limits: rate and concurrency limits (:class:`conveyor.Limit`), enforced by the store
                across every worker; see docs/flow-control.md.
            max_throttles: times a job may raise RateLimited before it is buried (default 100).
            max_snoozes: times a job may snooze (:class:`conveyor.Snooze`) before it is buried
                (default 100); see docs/job-control.md.
        """

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            kind: type[Task[Any, Any]] = AsyncTask if inspect.iscoroutinefunction(f) else Task
            t = kind(self, f, name=name, queue=queue, priority=priority, retry=retry, timeout=timeout)
            t.limits = Limits(t.name, t.signature, limits)
            if isinstance(max_throttles, bool) or not isinstance(max_throttles, int) or max_throttles < 0:
                raise ConfigurationError(f"task {t.name!r}: max_throttles must be an int >= 0")
            t.max_throttles = max_throttles
            if isinstance(max_snoozes, bool) or not isinstance(max_snoozes, int) or max_snoozes < 0:
                raise ConfigurationError(f"task {t.name!r}: max_snoozes must be an int >= 0")
            t.max_snoozes = max_snoozes
            t.max_result = None if max_result is None else _size(f"task {t.name!r}: max_result", max_result)
            if t.name in self.tasks:
                raise ConfigurationError(f"a task named {t.name!r} is already registered")
            self.tasks[t.name] = t
            return t

        return register if fn is None else register(fn)

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        catch_up: CatchUp = "skip",
        tolerance: float | None = None,
        name: str | None = None,
        queue: str = "default",
        priority: str | int = "normal",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> _PeriodicDecorator:
        """Register a function without parameters as a task run on a schedule by the workers.

        Args:
            cron: a cron expression, evaluated in UTC (``"*/5 * * * *"``).
            every: an interval (timedelta or seconds); ticks are aligned to the Unix epoch.
            catch_up: what becomes of a *missed* tick, one that starts later than ``tolerance``
                after its time by the store's clock (no worker ran, or none was free):
                ``"skip"`` does not run it; ``"once"`` runs only the latest missed tick, once.
            tolerance: seconds a tick may start late and still run; default half the interval,
                at most 60 s.
            name: as for :meth:`task`.
            queue: as for :meth:`task`.
            priority: as for :meth:`task`.
            retry: as for :meth:`task`.
            timeout: as for :meth:`task`.
        """
        seconds = every.total_seconds() if isinstance(every, timedelta) else every

        def register(f: Callable[[], Any]) -> Task[[], Any]:
            made: list[Schedule] = []
            t: Task[[], Any] = self.task(
                name=name, queue=queue, priority=priority, retry=retry, timeout=timeout
            )(on_time(f, lambda: made[0]))
            try:
                made.append(Schedule(t, cron=cron, every=seconds, catch_up=catch_up, tolerance=tolerance))
            except ConfigurationError:
                del self.tasks[t.name]
                raise
            self.schedules.append(made[0])
            return t

        return cast("_PeriodicDecorator", register)

    def enqueue_many(self, messages: Iterable[Message], connection: Any = None) -> list[Job[Any]]:
        """Store many messages in one round trip; returns their jobs in order.

        A message whose key is already held by a job of its queue with the same payload returns
        that job (``job.created`` is False). Raises KeyConflict, storing none of them, if a key
        is held with a different payload. On a Redis Cluster, a batch with keys must keep to
        queues of one hash slot (ConfigurationError otherwise): enqueue per queue.

        Raises:
            UnknownTask: a message names a task this application has not registered.
            QueueFull: the batch would take a queue past its ``max_queued`` cap; none of it
                was stored.

        Args:
            connection: enqueue inside your own open transaction on the store's database (a
                ``sqlite3.Connection`` to the SQLite file, a psycopg connection on PostgreSQL):
                the jobs exist if and only if you commit it.
        """
        batch = list(messages)
        if not batch:
            return []
        if self.hooks:
            return _hooks.around_enqueue(self.hooks, batch, lambda b: self._store(b, connection))
        return self._store(batch, connection)

    def _store(self, batch: list[Message], connection: Any) -> list[Job[Any]]:
        validate.messages(batch, self.priorities, self.max_payload)
        unknown = {m.task for m in batch} - self.tasks.keys()
        if unknown:
            raise UnknownTask(f"not registered in this application: {', '.join(sorted(unknown))}")
        if self.max_queued:
            try:
                stored = self.broker.enqueue(batch, connection=connection, max_queued=self.max_queued)
            except QueueFull as exc:
                metrics.count_refused(exc.queue, sum(1 for m in batch if m.queue == exc.queue))
                raise
        else:
            stored = self.broker.enqueue(batch, connection=connection)
        created = collections.Counter(
            (m.queue, m.priority) for m, e in zip(batch, stored, strict=True) if e.created
        )
        for (queue, level), n in created.items():
            metrics.count_enqueued(queue, self.priorities.name(level), n)
        return [Job(self, e.id, e.created) for e in stored]

    async def enqueue_many_async(self, messages: Iterable[Message]) -> list[Job[Any]]:
        """:meth:`enqueue_many` for asyncio code; the store call runs off the event loop."""
        return await asyncio.to_thread(self.enqueue_many, list(messages))

    def limit(
        self,
        queue: str,
        key: str | None = None,
        *,
        rate: str | float | None = None,
        burst: int | None = None,
        concurrency: int | None = None,
    ) -> None:
        """Set a limit at run time, kept in the store and seen by every worker from its next claim.

        Without ``key``, the limit is the queue's own and counts every job of the queue. With one,
        it overrides the declared limit of that (rendered) key in the queue, for instance
        ``app.limit("payments", "stripe:acct_9", rate="5/s")``, until :meth:`clear_limit`.
        """
        r = rule(check_key(key) if key is not None else "", rate, burst, concurrency)
        self.broker.set_limit(_check_queue(queue), r)

    def clear_limit(self, queue: str, key: str | None = None) -> bool:
        """Remove a run-time limit (declared limits apply again); False if none was set."""
        return self.broker.clear_limit(_check_queue(queue), check_key(key) if key is not None else "")

    def limits(self, queue: str | None = None) -> list[LimitInfo]:
        """The limit keys the store knows of, with their rule, running jobs and tokens now."""
        return self.broker.limits(None if queue is None else _check_queue(queue))

    def job(self, job_id: str) -> Job[Any]:
        """A handle on an existing job."""
        return Job(self, job_id)

    def pause(self, queue: str, task: str | Task[Any, Any] | None = None) -> None:
        """Stop every worker from starting jobs of ``queue`` (only of ``task`` in it, if given)
        until :meth:`resume`. Once this returns, no job it covers is started; enqueues are still
        accepted and running jobs finish. Stored in the store: see docs/flow-control.md.

        Raises:
            ConfigurationError: a queue or task name no message could carry.
        """
        self.broker.pause(queue, task.name if isinstance(task, Task) else task)

    def resume(self, queue: str, task: str | Task[Any, Any] | None = None) -> None:
        """Undo :meth:`pause` of ``queue`` (or of ``task`` in it) and wake the waiting workers."""
        self.broker.resume(queue, task.name if isinstance(task, Task) else task)

    def paused(self) -> list[Pause]:
        """The stored pauses, by queue then task (``task`` None: the whole queue)."""
        return self.broker.paused()


def _caps(max_queued: Mapping[str, int] | None) -> dict[str, int]:
    if max_queued is None:
        return {}
    if not isinstance(max_queued, Mapping):
        raise ConfigurationError(f"max_queued must map queue names to caps, got {_shown(max_queued)}")
    caps = {}
    for queue, cap in max_queued.items():
        _check_queue(queue)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ConfigurationError(
                f"max_queued[{queue!r}] must be a number of jobs, 0 or more, got {_shown(cap)}"
            )
        caps[queue] = cap
    return caps


def _size(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be a positive number of bytes, got {value!r}")
    return value


class Task(Generic[P, R]):
    """A registered task function. Call it to run it here; ``enqueue`` it to run it on a worker.

    Generic in the function's parameters ``P`` and its result ``R`` (for an ``async def``
    function, the awaited result), so type checkers check ``enqueue``'s arguments against the
    function and type ``job.result()``. Enqueue options go through :meth:`options`.
    """

    def __init__(
        self,
        app: Conveyor,
        fn: Callable[P, Any],
        *,
        name: str | None,
        queue: str,
        priority: str | int,
        retry: RetryPolicy | None,
        timeout: float | None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.signature = inspect.signature(fn)
        self._positional = _positional_arity(self.signature)
        clash = RESERVED.intersection(self.signature.parameters)
        if clash:
            raise ConfigurationError(
                f"task {self.name!r}: parameter name(s) {', '.join(sorted(clash))} are reserved for "
                f"enqueue options ({', '.join(sorted(RESERVED))}); rename them"
            )
        self.queue = _check_queue(queue)
        self.priority = app.priorities.resolve(priority)
        self.retry = retry or app.retry
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
            raise ConfigurationError(f"task {self.name!r}: timeout must be a positive number")
        self.timeout = timeout
        #: Largest encoded return value in bytes, or None for the application's ``max_result``.
        self.max_result: int | None = None
        #: Its limits, rendered into each message (set by ``Conveyor.task``).
        self.limits = Limits(self.name, self.signature, None)
        self.max_throttles = MAX_THROTTLES
        self.max_snoozes = MAX_SNOOZES
        self.is_async = inspect.iscoroutinefunction(fn)
        self._types: arguments.Signature | None = None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    @property
    def types(self) -> arguments.Signature:
        """How its typed arguments and result are converted (annotations resolved on first use)."""
        types = self._types
        if types is None:
            types = self._types = arguments.Signature(self.name, self.fn, self.signature)
        return types

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, now (no worker, no store)."""
        result: R = self.fn(*args, **kwargs)
        return result

    def options(
        self,
        *,
        priority: str | int | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | float | None = None,
        key: str | None = None,
        queue: str | None = None,
        headers: Mapping[str, str] | None = None,
        connection: Any = None,
    ) -> TaskOptions[P, R]:
        """This task with enqueue options set, checked now; its ``enqueue``, ``enqueue_async``
        and ``message`` take the function's arguments only::

            send_email.options(delay=60, priority="high").enqueue("ada@example.com")

        Args:
            priority: level name or index; defaults to the task's.
            delay: seconds (or a timedelta) from now before it may start.
            run_at: when it may start (aware datetime or Unix time); a past time means now.
            key: idempotency key: while a job with this key is kept, enqueueing the same call
                again returns that job instead of creating one (another call raises KeyConflict).
                The call is compared bound to the function's signature, so ``f(1, b=2)`` and
                ``f(1, 2)`` are the same call; a default passed explicitly is not the same as one
                left out. A keyed job stores its call in that canonical form.
            queue: overrides the task's queue.
            headers: job headers, a small map of str to str stored with the job and readable
                in the task as ``current_job().headers`` (see docs/hooks.md); checked at
                enqueue.
            connection: enqueue inside your own open transaction (see
                :meth:`Conveyor.enqueue_many`); for ``enqueue`` only.

        Raises:
            ConfigurationError: an invalid priority, delay, run_at, key or queue.
        """
        return TaskOptions(self, self._options(priority, delay, run_at, key, queue, headers), connection)

    def message(self, *args: P.args, **kwargs: P.kwargs) -> Message:
        """A call of this task as a message, for :meth:`Conveyor.enqueue_many`; with options,
        ``task.options(...).message(...)``.

        Raises:
            ArgumentError: the arguments do not fit the function's signature or annotations.
            SerializationError: an argument is not JSON; the message names it.
            PayloadTooLarge: the arguments encode to more than ``max_payload`` bytes.
        """
        if kwargs and not RESERVED.isdisjoint(kwargs):
            return self._message(args, kwargs, self._inline(kwargs))
        return self._message(args, kwargs, _DEFAULTS)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Enqueue a call of this task with the function's arguments; returns its :class:`Job`.
        With options: ``task.options(delay=5).enqueue(...)``.

        Options given here by name (``enqueue(x, delay=5)``) still work, for code written
        before :meth:`options`, but type checkers flag them: the function's signature is
        what they check this call against.
        """
        connection = None
        options = _DEFAULTS
        if kwargs and not RESERVED.isdisjoint(kwargs):
            connection = kwargs.pop("connection", None)
            options = self._inline(kwargs)
        message = self._message(args, kwargs, options)
        job: Job[R] = self.app.enqueue_many([message], connection=connection)[0]
        return job

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """:meth:`enqueue` for asyncio code."""
        job: Job[R] = (await self.app.enqueue_many_async([self.message(*args, **kwargs)]))[0]
        return job

    def _inline(self, kwargs: dict[str, Any]) -> _Options:
        """The options passed by name among a call's arguments, taken out of ``kwargs``."""
        return self._options(
            kwargs.pop("priority", None),
            kwargs.pop("delay", None),
            kwargs.pop("run_at", None),
            kwargs.pop("key", None),
            kwargs.pop("queue", None),
            kwargs.pop("headers", None),
        )

    def _options(
        self,
        priority: str | int | None,
        delay: float | timedelta | None,
        run_at: datetime | float | None,
        key: str | None,
        queue: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> _Options:
        if delay is not None and run_at is not None:
            raise ConfigurationError("give delay or run_at, not both")
        return _Options(
            queue=None if queue is None else _check_queue(queue),
            priority=None if priority is None else self.app.priorities.resolve(priority),
            delay=_check_delay(delay),
            run_at=_check_run_at(run_at),
            key=_check_key(key),
            headers=dict(headers) if headers else None,
        )

    def _message(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: _Options) -> Message:
        fits = (
            self._positional is not None
            and not kwargs
            and self._positional[0] <= len(args) <= self._positional[1]
        )
        rules: tuple[Rule, ...] = ()
        if not fits or self.limits.needs_arguments:
            try:
                bound = self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise ArgumentError(f"{self.name}: {exc}") from None
            if self.limits.needs_arguments:
                with_defaults = self.signature.bind(*args, **kwargs)
                with_defaults.apply_defaults()
                rules = self.limits.render(with_defaults.arguments)
            if options.key is not None:
                # A key's job is compared by payload: store the call in one canonical form (each
                # argument positional where it can be, the rest by name, defaults not filled
                # in), so that the same call made another way is the same payload.
                args, kwargs = bound.args, bound.kwargs
        types = self._types or self.types
        typed: list[int | str] | None = None
        if types.typed:
            args, kwargs, typed = types.dump(args, kwargs)
        try:
            payload = serializer.encode_args(self.name, args, kwargs, self.app.max_payload, typed)
        except SerializationError as exc:
            if type(exc) is SerializationError and "is not JSON-serializable" in str(exc):
                raise types.untyped(exc) from None
            raise
        return Message(
            id=new_id(),
            task=self.name,
            queue=self.queue if options.queue is None else options.queue,
            priority=self.priority if options.priority is None else options.priority,
            payload=payload,
            delay=options.delay,
            run_at=options.run_at,
            key=options.key,
            max_attempts=self.retry.max_attempts,
            limits=rules or self.limits.render(None),
            headers=options.headers,
        )


class AsyncTask(Task[P, R]):
    """A registered ``async def`` task: ``R`` is the awaited result; calling it here returns
    the coroutine."""

    def __call__(  # type: ignore[override]
        self, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]:
        """The function's coroutine, to await here (no worker, no store)."""
        coro: Coroutine[Any, Any, R] = self.fn(*args, **kwargs)
        return coro


@dataclass(frozen=True, slots=True)
class _Options:
    """Enqueue options, checked: None means the task's own queue or priority."""

    queue: str | None = None
    priority: int | None = None
    delay: float = 0.0
    run_at: float | None = None
    key: str | None = None
    headers: dict[str, str] | None = None


_DEFAULTS = _Options()


class TaskOptions(Generic[P, R]):
    """A task with enqueue options set (from :meth:`Task.options`): enqueue it with the
    function's arguments, which type checkers check against the function."""

    __slots__ = ("_connection", "_options", "task")

    def __init__(self, task: Task[P, R], options: _Options, connection: Any = None) -> None:
        self.task = task
        self._options = options
        self._connection = connection

    def __repr__(self) -> str:
        return f"<TaskOptions {self.task.name} {self._options}>"

    def message(self, *args: P.args, **kwargs: P.kwargs) -> Message:
        """A call with these options as a message, for :meth:`Conveyor.enqueue_many` (which
        takes the connection, if any)."""
        return self.task._message(args, kwargs, self._options)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Enqueue a call with these options; returns its :class:`Job`."""
        message = self.task._message(args, kwargs, self._options)
        job: Job[R] = self.task.app.enqueue_many([message], connection=self._connection)[0]
        return job

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """:meth:`enqueue` for asyncio code (without a connection)."""
        if self._connection is not None:
            raise ConfigurationError("enqueue_async takes no connection: use enqueue in your transaction")
        message = self.task._message(args, kwargs, self._options)
        job: Job[R] = (await self.task.app.enqueue_many_async([message]))[0]
        return job


class Job(Generic[R]):
    """A handle on an enqueued job; ``R`` is its task's result type."""

    def __init__(self, app: Conveyor, job_id: str, created: bool = True) -> None:
        self.app = app
        #: The job id.
        self.id = job_id
        #: False when enqueue found an existing job with the same idempotency key.
        self.created = created

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def info(self) -> JobInfo:
        """Everything stored about the job, errors of every attempt included."""
        info = self.app.broker.get(self.id)
        if info is None:
            raise JobNotFound(f"no job {self.id} (finished jobs are kept for the retention period)")
        return info

    def progress(self) -> Progress | None:
        """The latest progress the job reported (``current_job().progress(...)``), or None."""
        return self.info().progress

    def status(self) -> State | Literal["cancelling"]:
        """``scheduled``, ``ready``, ``running``, ``cancelling`` (running, a cancel requested),
        ``succeeded``, ``dead`` or ``cancelled``."""
        info = self.info()
        return "cancelling" if info.state == "running" and info.cancelling else info.state

    def cancel(self, grace: float | None = None) -> Cancelled:
        """Cancel the job, also while it runs (docs/job-control.md); returns what happened.

        ``cancelled``: it had not started and never runs. ``cancelling``: it runs; its worker
        stops it (an async task at once, a sync one sees ``current_job().cancelled`` and is
        interrupted after ``grace`` seconds, default 10) and it ends ``cancelled`` unless it
        succeeds first. ``finished``: it had ended already. ``missing``: no such job.
        The answer is a string that is true only for ``cancelled``, so ``if job.cancel():``
        means what it meant when this returned a bool (cancelled before it started).
        """
        grace = CANCEL_GRACE if grace is None else grace
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= 86400:
            raise ConfigurationError(f"cancel grace must be 0 to 86400 seconds, got {grace!r}")
        return Cancelled(self.app.broker.request_cancel(self.id, float(grace)))

    def result(self, timeout: float | None = None) -> R:
        """Wait for the job to finish and return its result.

        Raises:
            JobFailed: the job is dead; the exception carries every attempt's error.
            JobCancelled: the job was cancelled.
            TimeoutError: it did not finish within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.002
        while True:
            outcome = self._finished()
            if outcome is not None:
                result: R = outcome()
                return result
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
            remaining = math.inf if deadline is None else deadline - time.monotonic()
            time.sleep(max(0.0, min(pause, remaining)))
            pause = min(pause * 1.5, 0.1)

    async def result_async(self, timeout: float | None = None) -> R:
        """:meth:`result` for asyncio code."""
        return await asyncio.to_thread(self.result, timeout)

    def _finished(self) -> Callable[[], Any] | None:
        info = self.info()
        if info.state == "succeeded":
            task = self.app.tasks.get(info.task)

            def succeeded() -> Any:
                value = None if info.result is None else serializer.decode_value(info.result)
                return value if task is None else task.types.load_result(value)

            return succeeded
        if info.state == "dead":
            errors = info.errors

            def fail() -> Any:
                raise JobFailed(self.id, errors)

            return fail
        if info.state == "cancelled":

            def cancelled() -> Any:
                raise JobCancelled(f"job {self.id} was cancelled")

            return cancelled
        return None


def _positional_arity(signature: inspect.Signature) -> tuple[int, float] | None:
    """The fewest and most positional arguments that alone bind to ``signature``, or None when
    a call without keywords can fail for another reason (a required keyword-only parameter).
    Counting is all ``Signature.bind`` checks for such a call, at a tenth of its cost."""
    params = signature.parameters.values()
    if any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in positional if p.default is p.empty)
    most = math.inf if any(p.kind is p.VAR_POSITIONAL for p in params) else len(positional)
    return required, most


def _check_queue(queue: str) -> str:
    if type(queue) is str and queue in _valid_queues:
        return queue
    if not isinstance(queue, str) or not _QUEUE_NAME.fullmatch(queue):
        raise ConfigurationError(f"invalid queue name {queue!r}: use 1-128 of A-Z a-z 0-9 _ . : -")
    if len(_valid_queues) < 4096:
        _valid_queues.add(queue)
    return queue


def _shown(value: object) -> str:
    """``repr`` cut to 40 characters; an int too long to print is shown by its type."""
    try:
        return repr(value)[:40]
    except ValueError:
        return f"<{type(value).__name__} too large>"


def _check_delay(delay: float | timedelta | None) -> float:
    if delay is None:
        return 0.0
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    if (
        isinstance(delay, bool)
        or not isinstance(delay, int | float)
        or not (0 <= delay <= validate.MAX_SECONDS)
    ):
        raise ConfigurationError(
            f"invalid delay {_shown(delay)}: must be 0 to {validate.MAX_SECONDS:.0f} seconds (100 years)"
        )
    return float(delay)


def _check_run_at(run_at: datetime | float | None) -> float | None:
    if run_at is None:
        return None
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None:
            raise ConfigurationError("run_at must be timezone-aware (a naive datetime is ambiguous)")
        run_at = run_at.timestamp()
    if isinstance(run_at, bool) or not isinstance(run_at, int | float):
        raise ConfigurationError(f"invalid run_at {_shown(run_at)}: an aware datetime or Unix time")
    now = time.time()
    # Compared, not subtracted: exact for ints of any size, false for NaN.
    if not (now - validate.MAX_SECONDS <= run_at <= now + validate.MAX_SECONDS):
        raise ConfigurationError(
            f"invalid run_at {_shown(run_at)}: must be a Unix time within 100 years of now"
        )
    return float(run_at)


def _check_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ConfigurationError(f"invalid key: must be a non-empty str of at most {MAX_KEY_LENGTH} chars")
    return key
