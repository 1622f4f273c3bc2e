"""RQ on Redis: SimpleWorker (no fork per job), results not kept, batched enqueue_many, priority by queue order."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import probe
from redis import Redis
from rq import Queue

STORE = "redis"
ENQUEUE = "batched (Queue.enqueue_many, 1,000 per pipeline)"
CONCURRENCY = "SimpleWorker, 1 job at a time per process (RQ runs one job per worker process)"
PRIORITY = "queue 'high' listed before 'bench' on every worker (RQ's documented way to prioritise)"
DELAY = "Queue.enqueue_at(datetime), workers started --with-scheduler"

URL = "redis://127.0.0.1:6379/14"
conn = Redis.from_url(URL)
bench = Queue("bench", connection=conn)
high = Queue("high", connection=conn)


def enqueue_batch(kind: str, n: int) -> None:
    for start in range(0, n, 1000):
        bench.enqueue_many(
            [Queue.prepare_data(probe.record, (kind, 0.0), result_ttl=0) for _ in range(min(1000, n - start))]
        )


def enqueue_one(kind: str, ref: float) -> None:
    (high if kind == "h" else bench).enqueue(probe.record, kind, ref, result_ttl=0)


def enqueue_delayed(due: float) -> float:
    bench.enqueue_at(datetime.fromtimestamp(due, UTC), probe.record, "d", due, result_ttl=0)
    return due


def worker_cmd(phase: str) -> list[str]:
    rq = str(Path(sys.executable).parent / "rq")
    return [
        rq,
        "worker",
        "-u",
        URL,
        "-w",
        "rq.worker.SimpleWorker",
        "--with-scheduler",
        "-q",
        "high",
        "bench",
    ]
