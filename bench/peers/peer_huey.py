"""Huey on Redis: results off, blocking BRPOP reads, 8 worker threads; PriorityRedisHuey for the priority phase."""

from __future__ import annotations

import os
import sys
import time

import probe
from huey import PriorityRedisHuey, RedisHuey

PHASE = os.environ.get("PEER_PHASE", "throughput")
STORE = "redis"
ENQUEUE = "one by one (no batch API; task call per task)"
CONCURRENCY = "-k thread -w 8 (8 worker threads per consumer process)"
PRIORITY = "PriorityRedisHuey, priority=10 (high) / 0 (low)"
DELAY = "task.schedule(delay=...); the consumer's scheduler runs every 1 s (-s 1, its finest setting)"

cls = PriorityRedisHuey if PHASE == "priority" else RedisHuey
huey = cls("bench", url="redis://127.0.0.1:6379/14", results=False)


@huey.task()
def t(kind: str, ref: float) -> None:
    probe.record(kind, ref)


def enqueue_batch(kind: str, n: int) -> None:
    for _ in range(n):
        if kind == "l":
            t(kind, 0.0, priority=0)
        else:
            t(kind, 0.0)


def enqueue_one(kind: str, ref: float) -> None:
    if PHASE == "priority":
        t(kind, ref, priority=10)
    else:
        t(kind, ref)


def enqueue_delayed(due: float) -> float:
    t.schedule(args=("d", due), delay=due - time.time())
    return due


def worker_cmd(phase: str) -> list[str]:
    return [sys.executable, "-m", "huey.bin.huey_consumer", "peer_huey.huey", "-k", "thread", "-w", "8", "-q"]
