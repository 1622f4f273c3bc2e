"""What every benchmark task does, for every peer: one Redis round trip on db 14.

A task is called as ``task(kind, ref)``:
- ``"n"`` (throughput no-op) and ``"l"`` (low-priority backlog): ``INCR bench:<kind>``;
- ``"h"`` (high priority) and ``"d"`` (delayed): ``RPUSH bench:<kind> <time.time() - ref>``, where ``ref``
  is the enqueue time (high) or the due time (delayed), both from ``time.time()`` on this host.

The same signal for every peer, sync peers through redis-py, async peers through redis.asyncio.
"""

from __future__ import annotations

import asyncio
import time

import redis

REDIS = {"host": "127.0.0.1", "port": 6379, "db": 14}

_sync: redis.Redis | None = None
_async: dict[int, object] = {}


def _client() -> redis.Redis:
    global _sync
    if _sync is None:
        _sync = redis.Redis(**REDIS)
    return _sync


def record(kind: str, ref: float) -> None:
    start = time.time()
    if kind in ("n", "l"):
        _client().incr("bench:" + kind)
    else:
        _client().rpush("bench:" + kind, start - ref)


async def arecord(kind: str, ref: float) -> None:
    start = time.time()
    import redis.asyncio as aredis

    loop_id = id(asyncio.get_running_loop())
    client = _async.get(loop_id)
    if client is None:
        client = _async[loop_id] = aredis.Redis(**REDIS)
    if kind in ("n", "l"):
        await client.incr("bench:" + kind)  # type: ignore[attr-defined]
    else:
        await client.rpush("bench:" + kind, start - ref)  # type: ignore[attr-defined]
