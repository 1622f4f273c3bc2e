"""Celery on Redis (kombu's Redis transport), results off, solo pool, priorities by Redis priority queues."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import probe
from celery import Celery

PHASE = os.environ.get("PEER_PHASE", "throughput")
STORE = "redis"
ENQUEUE = "one by one (no batch API; apply_async per task)"
CONCURRENCY = (
    "--pool=solo (1 task at a time per process, no IPC), prefetch multiplier 64 (1 in the priority phase)"
)
PRIORITY = (
    "priority=0 (high) / 9 (low) with queue_order_strategy='priority', prefetch multiplier 1, acks_late"
)
DELAY = "apply_async(eta=...)"
RATE = "@app.task(rate_limit='R/s'): a token bucket in each worker process (not shared)"

app = Celery("peers", broker="redis://127.0.0.1:6379/14")
app.conf.update(
    task_ignore_result=True,
    task_default_queue="bench",
    worker_prefetch_multiplier=1 if PHASE == "priority" else 64,
    task_acks_late=PHASE == "priority",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
if PHASE == "priority":
    app.conf.broker_transport_options = {
        "queue_order_strategy": "priority",
        "priority_steps": list(range(10)),
        "sep": ":",
    }


# the rate phase's limit; Celery enforces it per worker process (a consumer's own token bucket)
RATE_LIMIT = f"{os.environ.get('PEER_RATE', '50')}/s" if PHASE == "rate" else None


@app.task(name="t", ignore_result=True, rate_limit=RATE_LIMIT)
def t(kind: str, ref: float) -> None:
    probe.record(kind, ref)


def enqueue_batch(kind: str, n: int) -> None:
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            if kind == "l":
                t.apply_async((kind, 0.0), priority=9, producer=producer)
            else:
                t.apply_async((kind, 0.0), producer=producer)


def enqueue_one(kind: str, ref: float) -> None:
    if PHASE == "priority":
        t.apply_async((kind, ref), priority=0)
    else:
        t.apply_async((kind, ref))


def enqueue_delayed(due: float) -> float:
    t.apply_async(("d", due), eta=datetime.fromtimestamp(due, UTC))
    return due


def worker_cmd(phase: str) -> list[str]:
    import sys

    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "peer_celery",
        "worker",
        *os.environ.get("CELERY_POOL", "--pool=solo").split(),
        "-Q",
        "bench",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel=WARNING",
    ]
