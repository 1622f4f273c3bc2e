"""What limits cost a PostgreSQL store: enqueue and reserve/ack throughput on one broker handle.

Three modes, each on a fresh schema: ``none`` (jobs without limits: the path every queue took
before limits existed), ``loose`` (every job carries a rate limit of 1,000,000/s with a burst of
1,000,000 and a concurrency of 1,000,000 on one of ``--groups`` keys: declared, never binding),
and ``queue`` (jobs without limits, and a queue limit set at run time that never binds). For each,
one thread enqueues ``--jobs`` jobs in batches of 500, then reserves ``--batch`` at a time and
acknowledges them as succeeded until none is left. Each figure is the median of ``--runs`` runs,
the modes alternated; the ratios are against ``none`` of the same invocation. Besides the rates
(wall clock), it reports the CPU time per job of the server's backends serving the broker (read
from /proc, so the server must run on this host) and of this process: on a shared host the CPU
time moves far less with other tenants' load than the rates do.

    .venv/bin/python bench/limits_cost_postgres.py [--runs 3] [--jobs 20000] [--modes none,loose,queue]

Run it on the code before a change with ``PYTHONPATH=<that code's src>`` (mode ``none`` only)
to compare the path without limits across versions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import msgspec
import psycopg

from conveyor.brokers.postgres import PostgresBroker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome

BASE = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PAYLOAD = b'[42, "an order id and a little more", {"cents": 1999}]'
LOOSE = 1_000_000


def backend_cpu(app: str) -> dict[int, int]:
    """CPU clock ticks so far of each server backend whose application_name is ``app``."""
    with psycopg.connect(BASE, autocommit=True) as conn:
        pids = [
            p for (p,) in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app])
        ]
    ticks = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return ticks


def spent(app: str, before: dict[int, int]) -> float:
    """Server CPU seconds since ``before`` (backends opened since then count from zero)."""
    now = backend_cpu(app)
    return sum(t - before.get(pid, 0) for pid, t in now.items()) / os.sysconf("SC_CLK_TCK")


Figures = tuple[float, float, float, float, float, float]


def run(mode: str, jobs: int, batch: int, groups: int) -> Figures:
    schema = f"bench_limits_{os.urandom(4).hex()}"
    app = f"limits_cost_{os.urandom(4).hex()}"
    broker = PostgresBroker(f"{BASE}?schema={schema}&application_name={app}", retention=3600.0)
    try:
        broker.time()  # creates the schema and the pool outside the timed part
        if mode != "none":
            from conveyor.records import Rule  # mode none also runs on code without limits
        if mode == "queue":
            broker.set_limit("bench", Rule(key="", rate=LOOSE, burst=LOOSE, concurrency=LOOSE))
        messages = []
        for i in range(jobs):
            m = Message(id=new_id(), task="t", queue="bench", priority=1, payload=PAYLOAD)
            if mode == "loose":
                rule = Rule(key=f"acct:{i % groups}", rate=LOOSE, burst=LOOSE, concurrency=LOOSE)
                m = msgspec.structs.replace(m, limits=(rule,))
            messages.append(m)
        server, client = backend_cpu(app), time.process_time()
        start = time.perf_counter()
        for i in range(0, jobs, 500):
            broker.enqueue(messages[i : i + 500])
        enqueued = jobs / (time.perf_counter() - start)
        enqueue_cpu = (spent(app, server) / jobs, (time.process_time() - client) / jobs)
        fairness = Fairness([6, 3, 1])
        done = 0
        server, client = backend_cpu(app), time.process_time()
        start = time.perf_counter()
        while True:
            got = broker.reserve(["bench"], batch, 60.0, "bench", fairness)
            if not got:
                break
            broker.ack([Outcome(d.id, d.token, "succeeded", result=b"null") for d in got])
            done += len(got)
        drained = done / (time.perf_counter() - start)
        drain_cpu = (spent(app, server) / jobs, (time.process_time() - client) / jobs)
        assert done == jobs, (mode, done)
        return enqueued, drained, *enqueue_cpu, *drain_cpu
    finally:
        broker.close()
        with psycopg.connect(BASE, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--modes", default="none,loose,queue")
    parser.add_argument("--json")
    args = parser.parse_args()
    modes = args.modes.split(",")
    figures: dict[str, list[Figures]] = {m: [] for m in modes}
    for r in range(args.runs):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            figures[mode].append(run(mode, args.jobs, args.batch, args.groups))
    out: dict[str, dict[str, float]] = {}
    names = ("enqueue_per_s", "reserve_ack_per_s", "enqueue_server_us", "enqueue_client_us",
             "reserve_ack_server_us", "reserve_ack_client_us")  # fmt: skip
    for mode, runs in figures.items():
        med = [statistics.median(r[i] for r in runs) for i in range(6)]
        out[mode] = {
            n: round(v * (1e6 if n.endswith("_us") else 1), 1) for n, v in zip(names, med, strict=True)
        }
        o = out[mode]
        print(
            f"{mode:6} enqueue {o['enqueue_per_s']:9,.0f}/s (CPU/job: server {o['enqueue_server_us']:5.1f} us,"
            f" client {o['enqueue_client_us']:5.1f} us)  reserve+ack {o['reserve_ack_per_s']:8,.0f}/s"
            f" (CPU/job: server {o['reserve_ack_server_us']:5.1f} us, client {o['reserve_ack_client_us']:5.1f} us)",
            flush=True,
        )
    if "none" in out:
        base = out["none"]
        for mode, o in out.items():
            if mode != "none":
                print(
                    f"{mode} / none: " + ", ".join(f"{n} x{o[n] / base[n]:.3f}" for n in names if base[n]),
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
