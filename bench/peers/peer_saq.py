"""SAQ on Redis: concurrency 32 per worker process, no priorities on Redis."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import aio
import probe
from saq import Queue

STORE = "redis"
ENQUEUE = "one by one (no batch enqueue; queue.enqueue per task, awaited in turn)"
CONCURRENCY = "concurrency=32 per worker process (asyncio)"
PRIORITY = None  # SAQ's Redis queue has no priorities (its PostgreSQL queue has)
DELAY = "enqueue(scheduled=epoch seconds, whole seconds only); the worker's schedule timer runs every 1 s (default)"

queue = Queue.from_url("redis://127.0.0.1:6379/14")


async def t(ctx: Any, *, kind: str, ref: float) -> None:
    await probe.arecord(kind, ref)


settings = {"queue": queue, "functions": [t], "concurrency": 32}

_connected = False


async def _connect() -> None:
    global _connected
    if not _connected:
        await queue.connect()
        _connected = True


async def _batch(kind: str, n: int) -> None:
    await _connect()
    for _ in range(n):
        await queue.enqueue("t", kind=kind, ref=0.0)


def enqueue_batch(kind: str, n: int) -> None:
    aio.run(_batch(kind, n))


async def _one(kind: str, ref: float, scheduled: int = 0) -> None:
    await _connect()
    await queue.enqueue("t", kind=kind, ref=ref, scheduled=scheduled)


def enqueue_one(kind: str, ref: float) -> None:
    aio.run(_one(kind, ref))


def enqueue_delayed(due: float) -> float:
    due_s = math.ceil(due)  # SAQ schedules in whole epoch seconds: measure against the due time it was given
    aio.run(_one("d", float(due_s), due_s))
    return float(due_s)


def close() -> None:
    if _connected:
        aio.run(queue.disconnect())


def worker_cmd(phase: str) -> list[str]:
    return [str(Path(sys.executable).parent / "saq"), "peer_saq.settings", "--workers", "1", "--quiet"]
