"""The floor under a high-priority task's start delay on Redis: how long one wake-up through
Redis takes on this host, idle and while Conveyor workers drain a backlog at full speed.

A probe process subscribes to a channel; every 20 ms this process publishes its clock there. The
probe notes when each message arrives (one hop: producer -> Redis -> probe), then makes one round
trip to Redis and notes the time again (the least any worker must do after a wake-up to claim a
task). No Conveyor code is on that path, so its percentiles are what any design waking a
worker through this Redis could reach on this host. The same run then measures Conveyor's own
start delay (``conveyor bench``'s priority run) under the same load, for comparison.

    .venv/bin/python bench/wake_floor.py [--url redis://127.0.0.1:6379/12] [--fifo]

``--fifo`` runs the probe under SCHED_FIFO (needs root): what is left is Redis' own delay.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
import uuid
from multiprocessing.queues import Queue

import redis

from conveyor.benchmark import Bench, Latency, percentiles

PERIOD = 0.02


Samples = tuple[list[float], list[float]]


def probe(url: str, channel: str, samples: int, fifo: bool, ready: Queue[bool], out: Queue[Samples]) -> None:
    if fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    client = redis.Redis.from_url(url)
    sub = client.pubsub()
    sub.subscribe(channel)
    while (m := sub.get_message(timeout=5)) is None or m["type"] != "subscribe":
        pass
    ready.put(True)
    hop: list[float] = []
    round_trip: list[float] = []
    while len(hop) < samples:
        m = sub.get_message(timeout=10)
        if m is None:
            break
        if m["type"] != "message":
            continue
        arrived = time.time()
        client.ping()
        answered = time.time()
        sent = float(m["data"])
        hop.append(1000 * (arrived - sent))
        round_trip.append(1000 * (answered - sent))
    out.put((hop, round_trip))


def wakes(url: str, samples: int, fifo: bool) -> tuple[Latency, Latency]:
    channel = f"wake-floor-{uuid.uuid4().hex[:8]}"
    ready: Queue[bool] = multiprocessing.Queue()
    out: Queue[Samples] = multiprocessing.Queue()
    proc = multiprocessing.Process(target=probe, args=(url, channel, samples, fifo, ready, out))
    proc.start()
    ready.get(timeout=30)
    client = redis.Redis.from_url(url)
    for _ in range(samples):
        client.publish(channel, repr(time.time()))
        time.sleep(PERIOD)
    hop, round_trip = out.get(timeout=60)
    proc.join()
    return percentiles(hop), percentiles(round_trip)


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

    hop, round_trip = wakes(args.url, args.samples, args.fifo)
    print(line("idle: one hop", hop))
    print(line("idle: one hop + one round trip", round_trip))

    with bench.behind_backlog(args.backlog) as low:
        hop, round_trip = wakes(args.url, args.samples, args.fifo)
        rate = low.rate()
    print(f"with 2 workers draining a low backlog at {rate:,.0f}/s (concurrency {args.concurrency}):")
    print(line("  one hop", hop))
    print(line("  one hop + one round trip", round_trip))

    latency = bench.priority(args.backlog, args.samples)
    print(f"Conveyor under the same load ({latency.backlog_drain or 0:,.0f}/s):")
    print(line("  high-priority start delay", latency))


if __name__ == "__main__":
    main()
