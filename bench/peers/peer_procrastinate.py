"""procrastinate on PostgreSQL (database ``peers``): async task, LISTEN/NOTIFY, concurrency 32 per worker."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

import aio
import probe
import procrastinate

STORE = "postgres"
ENQUEUE = "batched (task.batch_defer_async, 1,000 per call)"
CONCURRENCY = "--concurrency 32 per worker process (asyncio), listen/notify on (the default)"
PRIORITY = "configure(priority=10) for high, 0 for the backlog (higher runs first)"
POLL = os.environ.get("PROCRASTINATE_POLL")  # None: the default 5 s; the procrastinate-poll100ms row sets 0.1
DELAY = f"configure(schedule_at=...); scheduled jobs are found by the worker's poll, every {POLL or 5} s"

DSN = "postgresql://postgres@127.0.0.1:5432/peers"
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DSN))


@app.task(name="t", queue="bench")
async def t(kind: str, ref: float) -> None:
    await probe.arecord(kind, ref)


_open = False


async def _open_app() -> None:
    global _open
    if not _open:
        await app.open_async()
        _open = True


async def _setup() -> None:
    await _open_app()
    async with app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
        cur = await conn.execute("SELECT to_regclass('procrastinate_jobs')")
        installed = (await cur.fetchone())[0] is not None
    if not installed:
        await app.schema_manager.apply_schema_async()


def setup() -> None:
    aio.run(_setup())


async def _batch(kind: str, n: int) -> None:
    await _open_app()
    deferrer = t.configure(priority=0) if kind == "l" else t
    for start in range(0, n, 1000):
        await deferrer.batch_defer_async(*({"kind": kind, "ref": 0.0} for _ in range(min(1000, n - start))))


def enqueue_batch(kind: str, n: int) -> None:
    aio.run(_batch(kind, n))


async def _one(kind: str, ref: float, due: float | None) -> None:
    await _open_app()
    if due is not None:
        await t.configure(schedule_at=datetime.fromtimestamp(due, UTC)).defer_async(kind=kind, ref=ref)
    elif kind == "h":
        await t.configure(priority=10).defer_async(kind=kind, ref=ref)
    else:
        await t.defer_async(kind=kind, ref=ref)


def enqueue_one(kind: str, ref: float) -> None:
    aio.run(_one(kind, ref, None))


def enqueue_delayed(due: float) -> float:
    aio.run(_one("d", due, due))
    return due


def close() -> None:
    if _open:
        aio.run(app.close_async())


def worker_cmd(phase: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "procrastinate",
        "--app=peer_procrastinate.app",
        "--log-level",
        "warning",
        "worker",
        "--queues",
        "bench",
        "--concurrency",
        "32",
        *(["--fetch-job-polling-interval", POLL] if POLL else []),
    ]
