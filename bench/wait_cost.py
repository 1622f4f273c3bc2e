"""What ``wait_replicas=1`` costs an enqueue on Redis: throughput with and without it.

Starts private servers through the test support (``tests/support/redis_servers.py``): a
standalone primary with one replica, and a Redis Cluster of 3 primaries with a replica each,
all on loopback. On each, one thread enqueues jobs of one queue through ``RedisBroker`` for
``--seconds``, one job per call (what ``task.enqueue()`` does) and then in batches of 100
(``enqueue_many``), once with the plain URL and once with ``&wait_replicas=1``. Each figure is
the median of ``--runs`` runs, their order alternated; the ratio is with / without.

    .venv/bin/python bench/wait_cost.py [--runs 5] [--seconds 2] [--json bench/results/wait_cost.json]

On loopback a replica confirms within a round trip of the server's event loop; across a network
add one round trip between primary and replica per enqueue call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from redis_servers import cluster, server

from conveyor.brokers.redis import RedisBroker
from conveyor.ids import new_id
from conveyor.records import Message

PAYLOAD = b'[42, "an order id and a little more", {"cents": 1999}]'


def jobs_per_second(url: str, batch: int, seconds: float) -> float:
    broker = RedisBroker(url, retention=3600.0)
    try:
        broker.enqueue([Message(id=new_id(), task="t", queue="bench", priority=1, payload=PAYLOAD)])
        done = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            broker.enqueue(
                [
                    Message(id=new_id(), task="t", queue="bench", priority=1, payload=PAYLOAD)
                    for _ in range(batch)
                ]
            )
            done += batch
        return done / elapsed
    finally:
        broker.close()


@contextlib.contextmanager
def standalone(directory: Path) -> Iterator[str]:
    with (
        server(directory / "primary", "--repl-diskless-sync-delay", "0") as primary,
        server(directory / "replica") as replica,
    ):
        admin = replica.client()
        try:
            admin.replicaof("127.0.0.1", primary.port)
            deadline = time.monotonic() + 30
            while admin.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise TimeoutError("the replica did not sync")
                time.sleep(0.05)
        finally:
            admin.close()
        yield f"redis://127.0.0.1:{primary.port}/0?prefix=bench"


@contextlib.contextmanager
def on_cluster(directory: Path) -> Iterator[str]:
    with cluster(directory, masters=3, replicas=1) as nodes:
        yield f"redis://127.0.0.1:{nodes[0].port}?cluster=1&prefix=bench"


def measure(url: str, runs: int, seconds: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for batch in (1, 100):
        samples: dict[str, list[float]] = {"plain": [], "wait_replicas=1": []}
        for run in range(runs):
            order = ["plain", "wait_replicas=1"] if run % 2 == 0 else ["wait_replicas=1", "plain"]
            for mode in order:
                with_wait = url + ("&wait_replicas=1&wait_timeout=1000" if mode != "plain" else "")
                samples[mode].append(jobs_per_second(with_wait, batch, seconds))
        plain = statistics.median(samples["plain"])
        waiting = statistics.median(samples["wait_replicas=1"])
        out[f"batch {batch}"] = {
            "plain": round(plain),
            "wait_replicas=1": round(waiting),
            "ratio": round(waiting / plain, 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.runs < 1 or args.seconds <= 0:
        parser.error("--runs must be at least 1 and --seconds above 0")
    results: dict[str, object] = {"runs": args.runs, "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="conveyor-wait-cost-") as tmp:
        for name, setup in (("standalone + 1 replica", standalone), ("cluster 3x(1+1)", on_cluster)):
            with setup(Path(tmp) / name.split()[0]) as url:
                results[name] = measure(url, args.runs, args.seconds)
            print(name, json.dumps(results[name]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
