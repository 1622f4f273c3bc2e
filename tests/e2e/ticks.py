"""Reading which periodic ticks ran in an end-to-end test, and when (by the store's clock)."""

from __future__ import annotations

from harness import Cluster

from conveyor.records import JobInfo


def tick_time(key: str) -> float:
    """The tick a periodic job's key names (``periodic:<name>:<unix time>``)."""
    return float(key.rsplit(":", 1)[1])


def ran(cluster: Cluster, name: str) -> list[float]:
    """The ticks of schedule ``name`` whose function ran, one entry per run, in log order."""
    prefix = f"periodic:{name}:"
    return [tick_time(line.split()[0]) for line in cluster.executions() if line.startswith(prefix)]


def stored(cluster: Cluster, queue: str) -> list[JobInfo]:
    """Every job of ``queue`` the store holds (finished ones are kept for the retention)."""
    return cluster.app.broker.jobs(queue=queue, limit=10_000)
