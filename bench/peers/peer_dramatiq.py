"""Dramatiq on Redis: defaults (8 worker threads), no retries, high actor on its own queue with priority 0."""

from __future__ import annotations

import sys
import time

import dramatiq
import probe
from dramatiq.brokers.redis import RedisBroker

STORE = "redis"
ENQUEUE = "one by one (no batch API; actor.send per task)"
CONCURRENCY = "1 process x 8 threads (the default), default prefetch"
PRIORITY = (
    "high actor on queue 'high' with priority=0, low actor priority=100: every worker consumes both queues "
    "and runs prefetched messages by actor priority (Dramatiq's Redis broker has no message priority)"
)
DELAY = "send_with_options(delay=ms)"

broker = RedisBroker(url="redis://127.0.0.1:6379/14")
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="t", queue_name="bench", max_retries=0)
def t(kind: str, ref: float) -> None:
    probe.record(kind, ref)


@dramatiq.actor(actor_name="tlow", queue_name="bench", max_retries=0, priority=100)
def tlow(kind: str, ref: float) -> None:
    probe.record(kind, ref)


@dramatiq.actor(actor_name="thigh", queue_name="high", max_retries=0, priority=0)
def thigh(kind: str, ref: float) -> None:
    probe.record(kind, ref)


def enqueue_batch(kind: str, n: int) -> None:
    actor = tlow if kind == "l" else t
    for _ in range(n):
        actor.send(kind, 0.0)


def enqueue_one(kind: str, ref: float) -> None:
    (thigh if kind == "h" else t).send(kind, ref)


def enqueue_delayed(due: float) -> float:
    t.send_with_options(args=("d", due), delay=max(0, round((due - time.time()) * 1000)))
    return due


def worker_cmd(phase: str) -> list[str]:
    return [sys.executable, "-m", "dramatiq", "peer_dramatiq", "--processes", "1", "--threads", "8"]
