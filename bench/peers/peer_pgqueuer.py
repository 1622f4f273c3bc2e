"""pgqueuer on PostgreSQL (database ``peers``): asyncpg, LISTEN/NOTIFY, batch_size 10 (defaults), batched enqueue."""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta

import aio
import asyncpg
import probe
from pgqueuer import AsyncpgDriver, PgQueuer, Queries
from pgqueuer.models import Job

STORE = "postgres"
ENQUEUE = "batched (Queries.enqueue with lists, 1,000 per call)"
CONCURRENCY = "PgQueuer.run defaults: batch_size 10, dequeue_timeout 30 s, no concurrency limit (asyncio)"
PRIORITY = "enqueue(priority=10) for high, 0 for the backlog (higher runs first)"
DELAY = "enqueue(execute_after=timedelta); the worker sleeps until the next deferred job is due"

DSN = "postgresql://postgres@127.0.0.1:5432/peers"


async def main() -> PgQueuer:
    conn = await asyncpg.connect(DSN)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("t")
    async def t(job: Job) -> None:
        kind, ref = json.loads(job.payload or b"[]")
        await probe.arecord(kind, ref)

    return pgq


_queries: Queries | None = None


async def _q() -> Queries:
    global _queries
    if _queries is None:
        _queries = Queries(AsyncpgDriver(await asyncpg.connect(DSN)))
    return _queries


async def _setup() -> None:
    q = await _q()
    if not await q.schema_is_installed():
        await q.install()


def setup() -> None:
    aio.run(_setup())


async def _batch(kind: str, n: int) -> None:
    q = await _q()
    payload = json.dumps([kind, 0.0]).encode()
    for start in range(0, n, 1000):
        m = min(1000, n - start)
        await q.enqueue(["t"] * m, [payload] * m, [0] * m)


def enqueue_batch(kind: str, n: int) -> None:
    aio.run(_batch(kind, n))


async def _one(kind: str, ref: float, due: float | None) -> None:
    q = await _q()
    payload = json.dumps([kind, ref]).encode()
    if due is not None:
        await q.enqueue("t", payload, 0, timedelta(seconds=max(0.0, due - time.time())))
    else:
        await q.enqueue("t", payload, 10 if kind == "h" else 0)


def enqueue_one(kind: str, ref: float) -> None:
    aio.run(_one(kind, ref, None))


def enqueue_delayed(due: float) -> float:
    aio.run(_one("d", due, due))
    return due


def worker_cmd(phase: str) -> list[str]:
    # `pgq run peer_pgqueuer:main` is the documented command, but pgqueuer 1.6.0's CLI crashes while setting
    # up its logging ('str' object has no attribute 'name'); PgQueuer.run() with the same defaults instead.
    return [sys.executable, "peer_pgqueuer.py"]


async def _serve() -> None:
    pgq = await main()
    await pgq.run(dequeue_timeout=timedelta(seconds=30), batch_size=10)


if __name__ == "__main__":
    import asyncio

    asyncio.run(_serve())
