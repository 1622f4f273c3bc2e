"""Periodic tasks without a leader.

Every worker serving a schedule's queue keeps that schedule's *next* tick enqueued as a delayed
job whose idempotency key names the schedule and the tick time. Any number of workers enqueue
the same key, so each tick exists once; the delay machinery starts it on time.

Ticks missed while no worker ran: with ``catch_up="skip"`` (default) they are dropped; with
``"once"`` a starting worker also enqueues the latest missed tick, once. A tick counts as missed
only within the retention window: older keys are gone, so older ticks cannot be told apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from cronsim import CronSim, CronSimError

from conveyor.errors import ConfigurationError

if TYPE_CHECKING:
    from conveyor.app import Task
    from conveyor.records import Message

CatchUp = Literal["skip", "once"]


@dataclass(frozen=True)
class Schedule:
    """When a periodic task runs: a cron expression (UTC) or a fixed interval aligned to the epoch."""

    task: Task[Any, Any]
    cron: str | None = None
    every: float | None = None
    catch_up: CatchUp = "skip"

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

    def message(self, tick: float) -> Message:
        """The job of one tick, keyed by schedule and tick time."""
        return self.task.message(run_at=tick, key=f"periodic:{self.task.name}:{tick:.3f}")


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
