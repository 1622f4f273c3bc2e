"""Prometheus metrics.

Two kinds:

- *Store gauges* (queue depth per queue, priority and state; dead letter depth; oldest ready
  age; live workers, in all and per queue served) are computed from the broker's read operations at every scrape by
  :class:`StoreCollector`, so they are never stale and any process can serve them.
- *Process metrics* (enqueued, started and finished counters, start delay and run time
  histograms, lease reclaims, heartbeats) are counted where things happen: the enqueueing
  process and the worker processes. With several worker processes they are aggregated through
  prometheus-client's multiprocess mode (see :mod:`conveyor.worker.metrics_server`).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from conveyor.brokers import Broker
from conveyor.priority import Priorities
from conveyor.records import Delivery

#: Start delay buckets: a healthy queue starts tasks within milliseconds of their due time.
DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
RUN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

ENQUEUED = Counter(
    "conveyor_enqueued",
    "Jobs created by enqueue in this process (key matches excluded).",
    ["queue", "priority"],
)
REFUSED = Counter(
    "conveyor_enqueue_refused",
    "Messages this process tried to enqueue into a queue at its max_queued cap (QueueFull).",
    ["queue"],
)
STARTED = Counter("conveyor_started", "Attempts started by workers.", ["queue", "priority", "task"])
FINISHED = Counter(
    "conveyor_finished",
    "Attempts finished, by outcome: succeeded, retry, dead, throttled (RateLimited, not counted as an"
    " attempt), snoozed (Snooze, not counted as an attempt), cancelled (a cancel stopped it while it"
    " ran), or lost (lease lost before the outcome landed).",
    ["queue", "task", "outcome"],
)
CANCELLED = Counter(
    "conveyor_cancelled",
    "Running jobs a cancel stopped (their outcome landed as cancelled; docs/job-control.md).",
    ["queue", "task"],
)
START_DELAY = Histogram(
    "conveyor_start_delay_seconds",
    "Seconds from a job's due time to the start of its attempt.",
    ["queue", "priority"],
    buckets=DELAY_BUCKETS,
)
RUN_TIME = Histogram(
    "conveyor_run_seconds", "Seconds an attempt ran, by task.", ["queue", "task"], buckets=RUN_BUCKETS
)
RECLAIMS = Counter(
    "conveyor_lease_reclaims", "Expired leases reclaimed, by result: requeued or dead.", ["result"]
)
HEARTBEATS = Counter("conveyor_worker_heartbeats", "Heartbeats written by workers.")


class Recorder:
    """The worker-side hooks; label children are cached so the hot path is a dict lookup."""

    def __init__(self, priorities: Priorities) -> None:
        self.priorities = priorities
        self._started: dict[tuple[str, int, str], tuple[Counter, Histogram, Histogram]] = {}
        self._finished: dict[tuple[str, str, str], Counter] = {}

    def _children(self, d: Delivery) -> tuple[Counter, Histogram, Histogram]:
        key = (d.queue, d.priority, d.task)
        children = self._started.get(key)
        if children is None:
            level = self.priorities.name(d.priority)
            children = (
                STARTED.labels(d.queue, level, d.task),
                START_DELAY.labels(d.queue, level),
                RUN_TIME.labels(d.queue, d.task),
            )
            self._started[key] = children
        return children

    def started(self, deliveries: Iterable[Delivery], now: float) -> None:
        """Attempts start now: count them and observe their start delays."""
        groups: dict[tuple[Counter, Histogram], list[float]] = {}
        for d in deliveries:
            started, delay, _ = self._children(d)
            groups.setdefault((started, delay), []).append(max(0.0, now - d.run_at))
        for (started, delay), delays in groups.items():
            started.inc(len(delays))
            observe_many(delay, delays)

    def ran(self, runs: Iterable[tuple[Delivery, float]]) -> None:
        """Attempts' functions returned or raised, each after its number of seconds."""
        groups: dict[Histogram, list[float]] = {}
        for d, seconds in runs:
            groups.setdefault(self._children(d)[2], []).append(seconds)
        for run_time, values in groups.items():
            observe_many(run_time, values)

    def finished(self, outcomes: Iterable[tuple[Delivery, str]]) -> None:
        """Attempts' outcomes landed (``succeeded``, ``retry``, ``dead``) or were refused (``lost``)."""
        counts: dict[tuple[str, str, str], int] = {}
        for d, outcome in outcomes:
            key = (d.queue, d.task, outcome)
            counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            child = self._finished.get(key)
            if child is None:
                child = self._finished[key] = FINISHED.labels(*key)
            child.inc(n)
            if key[2] == "cancelled":
                CANCELLED.labels(key[0], key[1]).inc(n)

    def heartbeat(self) -> None:
        """A worker wrote its heartbeat."""
        HEARTBEATS.inc()

    def reclaimed(self, requeued: int, dead: int) -> None:
        """A reclaim sweep made expired leases ready again or dead."""
        if requeued:
            RECLAIMS.labels("requeued").inc(requeued)
        if dead:
            RECLAIMS.labels("dead").inc(dead)


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """Add ``values`` to a histogram's child as ``observe`` would one by one, with one update
    per bucket touched: per-observation locking cost a no-op task a tenth of its worker CPU.
    prometheus-client has no batched observe, so this uses its buckets and sum directly
    (tests/unit/test_histogram_batches.py checks the result against observe's)."""
    bounds = histogram._upper_bounds
    buckets = histogram._buckets
    per_bucket: dict[int, int] = {}
    for value in values:
        i = bisect.bisect_left(bounds, value)
        per_bucket[i] = per_bucket.get(i, 0) + 1
    histogram._sum.inc(math.fsum(values))
    for i, n in per_bucket.items():
        buckets[i].inc(n)


def count_enqueued(queue: str, priority: str, n: int = 1) -> None:
    """Count jobs created by an enqueue."""
    ENQUEUED.labels(queue, priority).inc(n)


def count_refused(queue: str, n: int) -> None:
    """Count messages refused because ``queue`` was at its ``max_queued`` cap."""
    REFUSED.labels(queue).inc(n)


class StoreCollector:
    """Gauges read from the store at every scrape, through the broker's read operations."""

    def __init__(
        self,
        broker: Callable[[], Broker],
        priorities: Priorities,
        max_queued: Mapping[str, int] | None = None,
    ) -> None:
        self.broker = broker
        self.priorities = priorities
        #: The application's caps of pending jobs, served as ``conveyor_queue_max_queued``.
        self.max_queued = dict(max_queued or {})

    def collect(self) -> Iterator[Metric]:
        """Query ``stats``, ``workers`` and ``paused`` and yield the gauges."""
        broker = self.broker()
        now = time.time()
        depth = GaugeMetricFamily(
            "conveyor_queue_depth",
            "Jobs per queue, priority and state.",
            labels=["queue", "priority", "state"],
        )
        dead = GaugeMetricFamily(
            "conveyor_dead_letter_depth", "Jobs in the dead letter queue.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "conveyor_oldest_ready_age_seconds", "Age of the oldest ready job.", labels=["queue"]
        )
        throttled = GaugeMetricFamily(
            "conveyor_throttled_jobs",
            "Ready jobs that rate or concurrency limits hold back now.",
            labels=["queue"],
        )
        stats = broker.stats(now=now)
        for qs in stats:
            for state, per_level in sorted(qs.counts.items()):
                for level, count in sorted(per_level.items()):
                    depth.add_metric([qs.queue, self.priorities.name(level), state], count)
            dead.add_metric([qs.queue], qs.total("dead"))
            throttled.add_metric([qs.queue], qs.throttled)
            oldest.add_metric([qs.queue], qs.oldest_ready_age or 0.0)
        workers = broker.workers(now=now)
        live = GaugeMetricFamily("conveyor_workers", "Worker processes with a live heartbeat.")
        live.add_metric([], len(workers))
        in_flight = GaugeMetricFamily("conveyor_worker_in_flight", "Tasks leased to live workers.")
        in_flight.add_metric([], sum(w.in_flight for w in workers))
        serving = GaugeMetricFamily(
            "conveyor_queue_workers",
            "Live worker processes serving each queue (0 for a queue with jobs that none serves).",
            labels=["queue"],
        )
        per_queue = dict.fromkeys(sorted({qs.queue for qs in stats}), 0)
        for w in workers:
            for queue in dict.fromkeys(w.queues):
                per_queue[queue] = per_queue.get(queue, 0) + 1
        for queue, count in sorted(per_queue.items()):
            serving.add_metric([queue], count)
        tokens = GaugeMetricFamily(
            "conveyor_limit_tokens",
            "Starts a rate-limited key allows now (its bucket's tokens).",
            labels=["queue", "key"],
        )
        running = GaugeMetricFamily(
            "conveyor_limit_running",
            "Jobs holding a slot of a concurrency-limited key.",
            labels=["queue", "key"],
        )
        closed = GaugeMetricFamily(
            "conveyor_limit_throttled",
            "1 while a key is closed by a task's RateLimited, else 0.",
            labels=["queue", "key"],
        )
        for info in broker.limits(now=now):
            labels = [info.queue, info.key or "(queue)"]
            if info.tokens is not None:
                tokens.add_metric(labels, info.tokens)
            if info.concurrency:
                running.add_metric(labels, info.running)
            closed.add_metric(labels, 1.0 if info.closed_until else 0.0)
        paused = GaugeMetricFamily(
            "conveyor_queue_paused",
            "1 for each paused queue (task empty) and each paused task of a queue.",
            labels=["queue", "task"],
        )
        for p in broker.paused():
            paused.add_metric([p.queue, p.task or ""], 1)
        yield from (depth, dead, oldest, throttled, live, in_flight, serving, paused, tokens, running, closed)
        if self.max_queued:
            caps = GaugeMetricFamily(
                "conveyor_queue_max_queued",
                "A queue's cap of pending (ready and scheduled) jobs, in this application's setting.",
                labels=["queue"],
            )
            for queue, cap in sorted(self.max_queued.items()):
                caps.add_metric([queue], cap)
            yield caps


def store_registry(
    broker: Callable[[], Broker], priorities: Priorities, max_queued: Mapping[str, int] | None = None
) -> CollectorRegistry:
    """A registry holding only the store gauges (what the dashboard's /metrics serves)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(broker, priorities, max_queued))
    return registry
