"""taskiq with taskiq-redis's ListQueueBroker (plain Redis list), no result backend, 32 async tasks per worker."""

from __future__ import annotations

import sys
from pathlib import Path

import aio
import probe
from taskiq_redis import ListQueueBroker

STORE = "redis"
ENQUEUE = "one by one (no batch API; task.kiq per task, awaited in turn)"
CONCURRENCY = "--max-async-tasks 32 per worker process, ack when received (the default)"
PRIORITY = None  # taskiq-redis brokers have no priorities
DELAY = (
    None  # delays need taskiq's separate scheduler process and a schedule source; no per-task delay on Redis
)

broker = ListQueueBroker("redis://127.0.0.1:6379/14", queue_name="bench")


@broker.task(task_name="t")
async def t(kind: str, ref: float) -> None:
    await probe.arecord(kind, ref)


_started = False


async def _start() -> None:
    global _started
    if not _started:
        await broker.startup()
        _started = True


async def _batch(kind: str, n: int) -> None:
    await _start()
    for _ in range(n):
        await t.kiq(kind, 0.0)


def enqueue_batch(kind: str, n: int) -> None:
    aio.run(_batch(kind, n))


async def _one(kind: str, ref: float) -> None:
    await _start()
    await t.kiq(kind, ref)


def enqueue_one(kind: str, ref: float) -> None:
    aio.run(_one(kind, ref))


def enqueue_delayed(due: float) -> float:
    raise NotImplementedError


def close() -> None:
    if _started:
        aio.run(broker.shutdown())


def worker_cmd(phase: str) -> list[str]:
    taskiq = str(Path(sys.executable).parent / "taskiq")
    return [
        taskiq,
        "worker",
        "peer_taskiq:broker",
        "--workers",
        "1",
        "--max-async-tasks",
        "32",
        "--log-level",
        "WARNING",
    ]
