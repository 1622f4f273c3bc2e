"""The floor under a high-priority task's start delay: how long one wake-up through the store
takes on this host, idle and while Conveyor workers drain a backlog at full speed.

A probe process waits for wake-ups the way an idle Conveyor worker does on that store: Redis
pub/sub, PostgreSQL LISTEN, or on SQLite a datagram to an abstract Unix socket. Every 20 ms this
process sends its clock that way, and the probe notes when each arrives (one hop). Then it does
the least any worker must do next to claim a task, and notes the time again:
- Redis and PostgreSQL: one round trip to the server (``PING``, ``SELECT 1``);
- SQLite: one turn on the store's write lock, an empty ``BEGIN IMMEDIATE`` transaction queued on
  the flock that every writer takes.
No task queue code is on those paths, so their percentiles are what any design waking a worker
through this store could reach on this host. The same run then measures Conveyor's own start
delay (``conveyor bench``'s priority run) under the same load, for comparison.

    .venv/bin/python bench/wake_floor.py [--url URL] [--concurrency 32] [--fifo]

``--url`` defaults to Redis db 12 (``make bench``'s); any store URL ``conveyor bench`` takes works.
``--fifo`` runs the probe under SCHED_FIFO (needs root): what is left is the store's own delay.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import time
import uuid
from multiprocessing.queues import Queue
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg import sql

from conveyor.benchmark import Bench, Latency, percentiles
from conveyor.brokers.postgres import dsn
from conveyor.brokers.sqlite import SQLiteBroker

PERIOD = 0.02


class RedisWire:
    """Pub/sub, then ``PING``. Every wire is built by the probe (``listening``) or the sender;
    ``step`` names what the probe does after a wake-up (``claim_floor``)."""

    step = "one round trip"

    def __init__(self, url: str, channel: str, listening: bool) -> None:
        self.client = redis.Redis.from_url(url)
        self.channel = channel
        if listening:
            self.sub = self.client.pubsub()
            self.sub.subscribe(channel)
            while (m := self.sub.get_message(timeout=5)) is None or m["type"] != "subscribe":
                pass

    def send(self, text: str) -> None:
        self.client.publish(self.channel, text)

    def receive(self, timeout: float) -> str | None:
        while (m := self.sub.get_message(timeout=timeout)) is not None:
            if m["type"] == "message":
                return bytes(m["data"]).decode()
        return None

    def claim_floor(self) -> None:
        self.client.ping()


class PostgresWire:
    """LISTEN/NOTIFY, then ``SELECT 1``."""

    step = "one round trip"

    def __init__(self, url: str, channel: str, listening: bool) -> None:
        self.conn = psycopg.connect(dsn.parse(url).conninfo, autocommit=True)
        self.channel = channel
        if listening:
            self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def send(self, text: str) -> None:
        self.conn.execute("SELECT pg_notify(%s, %s)", (self.channel, text))

    def receive(self, timeout: float) -> str | None:
        for note in self.conn.notifies(timeout=timeout, stop_after=1):
            return note.payload
        return None

    def claim_floor(self) -> None:
        self.conn.execute("SELECT 1")


class SQLiteWire:
    """A datagram to an abstract Unix socket, then an empty write transaction."""

    step = "one write-lock turn"

    def __init__(self, url: str, channel: str, listening: bool) -> None:
        self.address = "\0" + channel
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if listening:
            self.sock.bind(self.address)
            self.store = SQLiteBroker(url)

    def send(self, text: str) -> None:
        self.sock.sendto(text.encode(), self.address)

    def receive(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(64).decode()
        except TimeoutError:
            return None

    def claim_floor(self) -> None:
        with self.store._write():  # the flock and BEGIN IMMEDIATE every writer takes
            pass


def wire(url: str) -> type[RedisWire | PostgresWire | SQLiteWire]:
    """The wake-up path of the store at ``url``."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return SQLiteWire
    if scheme in ("postgres", "postgresql"):
        return PostgresWire
    return RedisWire


Samples = tuple[list[float], list[float]]


def probe(url: str, channel: str, samples: int, fifo: bool, ready: Queue[bool], out: Queue[Samples]) -> None:
    """Wait for the sender's clock ``samples`` times; after each, take the claim floor's step."""
    if fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    path = wire(url)(url, channel, listening=True)
    ready.put(True)
    hop: list[float] = []
    claim: list[float] = []
    while len(hop) < samples:
        text = path.receive(timeout=10)
        if text is None:
            break
        arrived = time.time()
        path.claim_floor()
        done = time.time()
        sent = float(text)
        hop.append(1000 * (arrived - sent))
        claim.append(1000 * (done - sent))
    out.put((hop, claim))


def wakes(url: str, samples: int, fifo: bool) -> tuple[Latency, Latency]:
    channel = f"wake-floor-{uuid.uuid4().hex[:8]}"
    ready: Queue[bool] = multiprocessing.Queue()
    out: Queue[Samples] = multiprocessing.Queue()
    proc = multiprocessing.Process(target=probe, args=(url, channel, samples, fifo, ready, out))
    proc.start()
    ready.get(timeout=30)
    sender = wire(url)(url, channel, listening=False)
    for _ in range(samples):
        sender.send(repr(time.time()))
        time.sleep(PERIOD)
    hop, claim = out.get(timeout=60)
    proc.join()
    return percentiles(hop), percentiles(claim)


def line(name: str, latency: Latency) -> str:
    return f"{name:<44} p50 {latency.p50_ms:6.2f}  p99 {latency.p99_ms:6.2f}  max {latency.max_ms:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--backlog", type=int, default=250_000)
    parser.add_argument("--samples", type=int, default=250)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fifo", action="store_true", help="run the probe under SCHED_FIFO (root)")
    args = parser.parse_args()
    bench = Bench(args.url, args.concurrency)
    then = f"one hop + {wire(args.url).step}"

    hop, claim = wakes(args.url, args.samples, args.fifo)
    print(line("idle: one hop", hop))
    print(line(f"idle: {then}", claim))

    with bench.behind_backlog(args.backlog) as low:
        hop, claim = wakes(args.url, args.samples, args.fifo)
        rate = low.rate()
    print(f"with 2 workers draining a low backlog at {rate:,.0f}/s (concurrency {args.concurrency}):")
    print(line("  one hop", hop))
    print(line(f"  {then}", claim))

    latency = bench.priority(args.backlog, args.samples)
    print(f"Conveyor under the same load ({latency.backlog_drain or 0:,.0f}/s):")
    print(line("  high-priority start delay", latency))


if __name__ == "__main__":
    main()
