"""Periodic tasks without a leader.

Every worker serving a schedule's queue keeps that schedule's *next* tick enqueued as a delayed
job whose idempotency key names the schedule and the tick time. Any number of workers enqueue
the same key, so each tick exists once; the delay machinery starts it on time.

Everything runs on the store's clock: workers plan ticks by it, and a tick is late by it.

A tick is *missed* when its first attempt starts more than the schedule's tolerance after the
tick (default half the interval, at most a minute): no worker ran at the time (the tick a worker
had stored ahead comes due while none runs), or none had a free slot. With ``catch_up="skip"``
(default) a missed tick does not run: its job ends as succeeded without calling the function,
and the worker logs it. With ``"once"`` a missed tick runs only if it is the latest tick due
(no later one is due yet), and a starting worker also enqueues the latest tick at or before its
start: after a gap, one tick runs, once. That tick counts only within the retention window:
older keys are gone, so older ticks cannot be told apart. A tick that already started once (its
lease was lost, or it failed and is retried) is not checked again: it runs to its outcome; so
does the function enqueued by hand (a job without the schedule's tick key).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from cronsim import CronSim, CronSimError

from conveyor.context import current_job
from conveyor.errors import ConfigurationError

if TYPE_CHECKING:
    from conveyor.app import Task
    from conveyor.records import Message

CatchUp = Literal["skip", "once"]
R = TypeVar("R")
#: Longest default tolerance of a tick's lateness, in seconds.
MAX_TOLERANCE = 60.0
log = logging.getLogger("conveyor.worker")


@dataclass(frozen=True)
class Schedule:
    """When a periodic task runs: a cron expression (UTC) or a fixed interval aligned to the epoch."""

    task: Task[Any, Any]
    cron: str | None = None
    every: float | None = None
    catch_up: CatchUp = "skip"
    #: Seconds a tick may start after its time and still count as on time (None: the default).
    tolerance: float | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError(f"periodic task {self.task.name!r}: give cron= or every=, not both")
        if self.every is not None and not (self.every > 0 and math.isfinite(self.every)):
            raise ConfigurationError(f"periodic task {self.task.name!r}: every must be positive")
        if self.cron is not None:
            try:
                CronSim(self.cron, datetime.now(UTC))
            except CronSimError as exc:
                raise ConfigurationError(
                    f"periodic task {self.task.name!r}: bad cron {self.cron!r}: {exc}"
                ) from None
        if self.catch_up not in ("skip", "once"):
            raise ConfigurationError("catch_up must be 'skip' or 'once'")
        if self.tolerance is not None and not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise ConfigurationError(f"periodic task {self.task.name!r}: tolerance must be >= 0 seconds")

    def next_after(self, t: float) -> float:
        """The first tick strictly after ``t``."""
        if self.every is not None:
            return (math.floor(t / self.every) + 1) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(math.floor(t), UTC)
        return next(iter(CronSim(self.cron, start))).timestamp()

    def latest_at_or_before(self, t: float) -> float:
        """The last tick at or before ``t``."""
        if self.every is not None:
            return math.floor(t / self.every) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(math.floor(t), UTC) + timedelta(seconds=1)
        return next(iter(CronSim(self.cron, start, reverse=True))).timestamp()

    def tolerance_at(self, tick: float) -> float:
        """How late ``tick`` may start and still be on time: the given tolerance, else half the
        time to the next tick, at most MAX_TOLERANCE."""
        if self.tolerance is not None:
            return self.tolerance
        return min((self.next_after(tick) - tick) / 2, MAX_TOLERANCE)

    def runs(self, tick: float, attempt: int, now: float) -> bool:
        """Whether a tick starting at ``now`` (the store's clock) runs (see the module's doc)."""
        if attempt > 1 or now - tick <= self.tolerance_at(tick):
            return True
        return self.catch_up == "once" and self.next_after(tick) > now

    def message(self, tick: float) -> Message:
        """The job of one tick, keyed by schedule and tick time."""
        return self.task.options(run_at=tick, key=f"periodic:{self.task.name}:{tick:.3f}").message()


def plan(schedules: Sequence[Schedule], now: float, starting: bool, retention: float) -> list[Message]:
    """Messages a worker enqueues at ``now``: each schedule's next tick, and on start the latest
    missed tick of ``catch_up="once"`` schedules still inside the retention window."""
    out = []
    for s in schedules:
        if starting and s.catch_up == "once":
            last = s.latest_at_or_before(now)
            if now - last < retention:
                out.append(s.message(last))
        out.append(s.message(s.next_after(now)))
    return out


def on_time(fn: Callable[[], R], schedule: Callable[[], Schedule]) -> Callable[[], R]:
    """``fn`` wrapped to return None without running when a worker starts a missed tick that
    ``schedule()`` says must not run. Called outside a worker, or enqueued by hand (a job
    without the schedule's tick key), it runs ``fn`` as it is."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async() -> Any:
            if await asyncio.to_thread(_drop, schedule()):
                return None
            return await fn()

        return cast("Callable[[], R]", run_async)

    @functools.wraps(fn)
    def run() -> Any:
        return None if _drop(schedule()) else fn()

    return run


def _drop(schedule: Schedule) -> bool:
    """Whether the running job, a tick of ``schedule``, was missed and must not run."""
    try:
        delivery = current_job().delivery
    except LookupError:
        return False
    tick = (delivery.key or "").startswith(f"periodic:{schedule.task.name}:")
    if not tick or delivery.attempt > 1:  # enqueued by hand, or started once: it runs
        return False
    now = schedule.task.app.broker.time()
    if schedule.runs(delivery.run_at, delivery.attempt, now):
        return False
    log.warning(
        "periodic %s: tick %s missed (started %.3f s late, catch_up=%r): not run",
        schedule.task.name,
        datetime.fromtimestamp(delivery.run_at, UTC).isoformat(),
        now - delivery.run_at,
        schedule.catch_up,
    )
    return True
