"""arq on Redis: results not kept, max_jobs 32 per worker process, no priorities."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any

import aio
import probe
from arq import create_pool
from arq.connections import RedisSettings

STORE = "redis"
ENQUEUE = "one by one (no batch API; enqueue_job per task, awaited in turn)"
CONCURRENCY = (
    "max_jobs=32 per worker process (asyncio), keep_result=0, poll_delay "
    + os.environ.get("ARQ_POLL_DELAY", "0.5")
    + " s"
)
PRIORITY = None  # arq has no priorities (only separate queues, each needing its own worker)
POLL_DELAY = float(os.environ.get("ARQ_POLL_DELAY", "0.5"))  # the default; the arq-poll50ms row sets 0.05
DELAY = f"enqueue_job(_defer_until=...); workers poll every poll_delay={POLL_DELAY:g} s"

REDIS = RedisSettings(host="127.0.0.1", port=6379, database=14)


async def t(ctx: Any, kind: str, ref: float) -> None:
    await probe.arecord(kind, ref)


class WorkerSettings:
    functions = [t]
    redis_settings = REDIS
    max_jobs = 32
    keep_result = 0
    max_tries = 1
    poll_delay = POLL_DELAY


_pool = None


async def _get_pool() -> Any:
    global _pool
    if _pool is None:
        _pool = await create_pool(REDIS)
    return _pool


async def _batch(kind: str, n: int) -> None:
    pool = await _get_pool()
    for _ in range(n):
        await pool.enqueue_job("t", kind, 0.0)


def enqueue_batch(kind: str, n: int) -> None:
    aio.run(_batch(kind, n))


async def _one(kind: str, ref: float, due: float | None = None) -> None:
    pool = await _get_pool()
    if due is None:
        await pool.enqueue_job("t", kind, ref)
    else:
        await pool.enqueue_job("t", kind, ref, _defer_until=datetime.fromtimestamp(due, UTC))


def enqueue_one(kind: str, ref: float) -> None:
    aio.run(_one(kind, ref))


def enqueue_delayed(due: float) -> float:
    aio.run(_one("d", due, due))
    return due


def close() -> None:
    if _pool is not None:
        aio.run(_pool.aclose())


def worker_cmd(phase: str) -> list[str]:
    # `arq peer_arq.WorkerSettings` logs a line per job at INFO and has no option to quiet it; the same
    # worker through arq's public run_worker() with logging at WARNING.
    return [sys.executable, "peer_arq.py"]


if __name__ == "__main__":
    import logging

    from arq import run_worker

    logging.basicConfig(level=logging.WARNING)
    run_worker(WorkerSettings)  # type: ignore[arg-type]
