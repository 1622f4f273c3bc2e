"""Conveyor itself through the same harness, batched enqueue.

The store comes from ``CONVEYOR_URL`` (run.py sets it per Conveyor row: SQLite, PostgreSQL, Redis).
``CONVEYOR_PEER_MODE`` picks the task and the worker's settings, so each row is compared with its
like: ``async`` (the default rows): an ``async def`` task through redis.asyncio, concurrency 32;
``sync``: a plain function through redis-py, on the worker's default settings (what a user who sets
nothing runs), beside the sync peers (Celery, Dramatiq, Huey, RQ).
"""

from __future__ import annotations

import json
import os
import sys

import probe

from conveyor import Conveyor, Limit

URL = os.environ["CONVEYOR_URL"]
STORE = URL.split(":")[0].replace("postgresql", "postgres")
ENQUEUE = "batched (app.enqueue_many, 1,000 per call)"
MODE = os.environ.get("CONVEYOR_PEER_MODE", "async")
CONCURRENCY = (
    "default concurrency per worker process (python -m conveyor.worker.process), sync task"
    if MODE == "sync"
    else "concurrency 32 per worker process (python -m conveyor.worker.process), async task"
)
PRIORITY = "priority='high' for high, 'low' for the backlog (levels high/normal/low, weights 6:3:1)"
DELAY = "enqueue(run_at=Unix time)"
RATE = "@app.task(limits=[Limit(rate=R)]): one token bucket in the store, shared by every worker"
QUEUE = os.environ.get("PEER_QUEUE", "peersbench")

app = Conveyor(URL)


# the rate phase's limit (burst 1, like Celery's bucket); enforced by the store across workers
LIMITS = (
    [Limit(rate=float(os.environ.get("PEER_RATE", "50")))] if os.environ.get("PEER_PHASE") == "rate" else []
)


if MODE == "sync":

    @app.task(name="peers.t", queue=QUEUE, limits=LIMITS)
    def t(kind: str, ref: float) -> None:
        probe.record(kind, ref)

else:

    @app.task(name="peers.t", queue=QUEUE, limits=LIMITS)
    async def t(kind: str, ref: float) -> None:  # type: ignore[misc]
        await probe.arecord(kind, ref)


def enqueue_batch(kind: str, n: int) -> None:
    priority = "low" if kind == "l" else "normal"
    for start in range(0, n, 1000):
        app.enqueue_many(t.message(kind, 0.0, priority=priority) for _ in range(min(1000, n - start)))


def enqueue_one(kind: str, ref: float) -> None:
    t.enqueue(kind, ref, priority="high" if kind == "h" else "normal")


def enqueue_delayed(due: float) -> float:
    t.enqueue("d", due, run_at=due)
    return due


def close() -> None:
    app.close()


def worker_cmd(phase: str) -> list[str]:
    config = json.dumps({"queues": [QUEUE]} if MODE == "sync" else {"queues": [QUEUE], "concurrency": 32})
    os.environ.setdefault("CONVEYOR_LOG_LEVEL", "WARNING")  # inherited by the workers, as in conveyor bench
    return [sys.executable, "-m", "conveyor.worker.process", "peer_conveyor:app", config]
