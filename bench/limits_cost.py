"""What limits cost the store's hot calls: enqueue, reserve and ack throughput on one store, for
a queue without limits and for limits that are declared but never bind.

    python bench/limits_cost.py URL [--tasks N] [--mode none|declared|groups] [--rounds R]

``declared``: every job has a rate and a concurrency limit on one key, both far above what the
run reaches; ``groups``: the same over 100 keys (fairness takes turns between 100 groups).
Run it alternately on the code before and after a change (PYTHONPATH=<other tree>/src) and
compare the medians as ratios: the machine's speed drifts between runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import msgspec

from conveyor.brokers import open_broker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome

try:
    from conveyor.records import Rule
except ImportError:  # the code before limits
    Rule = None  # type: ignore[assignment,misc]

BATCH = 500
CLAIM = 32


def messages(queue: str, n: int, mode: str) -> list[Message]:
    out = []
    for i in range(n):
        m = Message(id=new_id(), task="t", queue=queue, priority=1, payload=b"[[],{}]")
        if mode != "none":  # (without limits, the code before them runs this too)
            key = "acct:0" if mode == "declared" else f"acct:{i % 100}"
            rules = (Rule(key=key, rate=1_000_000.0, burst=1_000_000, concurrency=1_000_000),)
            m = msgspec.structs.replace(m, limits=rules)  # type: ignore[call-arg]
        out.append(m)
    return out


class ScriptTime:
    """Microseconds the server spent in scripts (EVALSHA) during a phase, from INFO
    commandstats: steadier than the client's clock on a busy host. Needs a server of one's own
    (it resets the server's statistics); None elsewhere."""

    def __init__(self, url: str) -> None:
        from redis import Redis

        from conveyor.brokers.redis.url import parse

        self.client = Redis.from_url(parse(url).url)

    def start(self) -> None:
        self.client.config_resetstat()

    def usec(self) -> float:
        return float(self.client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))


def run(url: str, tasks: int, mode: str, server: ScriptTime | None) -> dict[str, float]:
    broker = open_broker(url)
    queue = f"bench-{os.urandom(4).hex()}"
    batch = messages(queue, tasks, mode)
    out: dict[str, float] = {}
    if server:
        server.start()
    began = time.perf_counter()
    for i in range(0, tasks, BATCH):
        broker.enqueue(batch[i : i + BATCH])
    enqueue = time.perf_counter() - began
    if server:
        out["enqueue us/task (server)"] = server.usec() / tasks
        server.start()
    fairness = Fairness((6, 3, 1))
    reserve = ack = reserve_us = ack_us = 0.0
    done = 0
    while done < tasks:
        u0 = server.usec() if server else 0.0
        t = time.perf_counter()
        got = broker.reserve([queue], CLAIM, 60.0, "bench", fairness)
        reserve += time.perf_counter() - t
        u1 = server.usec() if server else 0.0
        t = time.perf_counter()
        broker.ack([Outcome(d.id, d.token, "succeeded") for d in got])
        ack += time.perf_counter() - t
        u2 = server.usec() if server else 0.0
        reserve_us, ack_us = reserve_us + u1 - u0, ack_us + u2 - u1
        done += len(got)
        if not got:
            raise SystemExit(f"reserve found nothing with {tasks - done} left")
    if server:
        out["reserve us/task (server)"] = reserve_us / tasks
        out["ack us/task (server)"] = ack_us / tasks
    broker.close()
    return {"enqueue/s": tasks / enqueue, "reserve/s": tasks / reserve, "ack/s": tasks / ack, **out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--mode", choices=("none", "declared", "groups"), default="none")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-time", action="store_true", help="a private server: read its script time")
    args = parser.parse_args()
    server = ScriptTime(args.url) if args.server_time else None
    results = [run(args.url, args.tasks, args.mode, server) for _ in range(args.rounds)]
    summary = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(args.mode, ", ".join(f"{k} {v:,.2f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
