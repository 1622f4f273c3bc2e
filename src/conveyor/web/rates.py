"""Throughput and latency for the dashboard, derived from the broker's read operations.

Every worker reports cumulative outcome counts with its heartbeat (``WorkerInfo.counts`` and
``.outcomes``). The dashboard keeps successive samples of the registry in memory and differences
them: a rate counts only workers present, with the same start time, in both samples of a pair,
so a worker that vanished or restarted never produces a negative or inflated rate. Latency is the
start delay (due -> started) of a sample of recently finished jobs.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from conveyor.records import JobInfo, WorkerInfo

FAILED = ("retry", "dead", "lost")


@dataclass(frozen=True)
class Sample:
    """The worker registry and a latency summary at one moment."""

    at: float
    workers: dict[str, WorkerInfo]
    delay_p50: float | None = None
    delay_p95: float | None = None


@dataclass
class Rates:
    """Outcomes per minute: in total and per ``(queue, level)``."""

    succeeded: float = 0.0
    failed: float = 0.0
    by_level: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def start_delays(jobs: Iterable[JobInfo]) -> list[float]:
    """Seconds from due time to start of each job that started (absurd stored times skipped)."""
    delays = (j.started_at - j.run_at for j in jobs if j.started_at is not None)
    return [max(0.0, d) for d in delays if math.isfinite(d)]


def difference(older: Sequence[Sample], new: Sample) -> Rates:
    """Outcomes per minute up to ``new``, for each worker since the oldest of ``older`` that
    lists it with the same start time (workers that vanished or restarted count for nothing).

    Each worker's counts are as of its own last heartbeat, so its rate is its count delta over
    the time between those two heartbeats, not between the samples.
    """
    rates = Rates()
    for wid, now in new.workers.items():
        before = next(
            (w for s in older if (w := s.workers.get(wid)) is not None and w.started_at == now.started_at),
            None,
        )
        minutes = 0.0 if before is None else (now.last_beat - before.last_beat) / 60
        if before is None or minutes <= 0:
            continue
        rates.succeeded += (
            max(0, now.counts.get("succeeded", 0) - before.counts.get("succeeded", 0)) / minutes
        )
        rates.failed += sum(max(0, now.counts.get(k, 0) - before.counts.get(k, 0)) for k in FAILED) / minutes
        for queue, per_level in now.outcomes.items():
            for level, counts in per_level.items():
                then = before.outcomes.get(queue, {}).get(level, {})
                slot = rates.by_level.setdefault((queue, int(level)), {"succeeded": 0.0, "failed": 0.0})
                slot["succeeded"] += max(0, counts.get("succeeded", 0) - then.get("succeeded", 0)) / minutes
                slot["failed"] += sum(max(0, counts.get(k, 0) - then.get(k, 0)) for k in FAILED) / minutes
    return rates


class Sampler:
    """Successive samples of the worker registry, kept for ``keep`` seconds; thread-safe."""

    def __init__(self, keep: float = 600.0, min_interval: float = 1.0) -> None:
        self.keep = keep
        self.min_interval = min_interval
        self.samples: collections.deque[Sample] = collections.deque()
        self._lock = threading.Lock()

    def observe(self, now: float, workers: Sequence[WorkerInfo], recent: Sequence[JobInfo]) -> None:
        """Add a sample, unless the last one is younger than ``min_interval``."""
        delays = start_delays(recent)
        sample = Sample(now, {w.id: w for w in workers}, quantile(delays, 0.5), quantile(delays, 0.95))
        with self._lock:
            if self.samples and now - self.samples[-1].at < self.min_interval:
                return
            self.samples.append(sample)
            while self.samples and now - self.samples[0].at > self.keep:
                self.samples.popleft()

    def rates(self, window: float = 60.0) -> Rates | None:
        """Outcomes per minute over about the last ``window`` seconds; None before two samples."""
        with self._lock:
            samples = list(self.samples)
        if len(samples) < 2:
            return None
        newest = samples[-1]
        older = [s for s in samples[:-1] if newest.at - s.at <= window]
        return difference(older or [samples[-2]], newest)

    def series(self, window: float = 30.0) -> list[dict[str, float | None]]:
        """One point per sample after the first: time, outcomes per minute over the trailing
        ``window`` seconds, start delay."""
        points: list[dict[str, float | None]] = []
        with self._lock:
            samples = list(self.samples)
        start = 0
        for i in range(1, len(samples)):
            new = samples[i]
            while new.at - samples[start].at > window and start < i - 1:
                start += 1
            r = difference(samples[start:i], new)
            points.append(
                {
                    "t": new.at,
                    "succeeded": r.succeeded,
                    "failed": r.failed,
                    "delay_p50": new.delay_p50,
                    "delay_p95": new.delay_p95,
                }
            )
        return points
