"""How a worker serving several saturated queues shares its starts between them, and what a
reservation from several queues costs.

Two measurements on one store:
- split: ``--per-queue`` no-ops queued in each of two fresh queues, then ``--processes`` real
  worker processes at ``--concurrency`` serving both (``--queues-spec`` adds weights or
  ``--strict``); of the first ``--per-queue`` starts (by the store's ``started_at``), how many
  each queue had;
- reserve: reservations straight through the broker (no worker) of ``--limit`` jobs at a time
  from both saturated queues, as jobs per second and reservations per second.

    .venv/bin/python bench/queue_fairness.py --url URL [--concurrency 1] [--processes 1]

Figures on a shared machine are noisy: compare runs made one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid

from conveyor.benchmark import app, noop
from conveyor.priority import Fairness


def _queued(queue: str, n: int) -> None:
    for start in range(0, n, 1000):
        app.enqueue_many(noop.message(i, queue=queue) for i in range(start, min(n, start + 1000)))


def _succeeded(queue: str) -> int:
    (qs,) = app.broker.stats([queue])
    return sum(qs.counts.get("succeeded", {}).values())


def split(url: str, per_queue: int, processes: int, concurrency: int, spec: list[str], strict: bool) -> None:
    run = uuid.uuid4().hex[:6]
    names = [f"{q}-{run}" for q in ("a", "b")]
    _queued(names[0], per_queue)
    _queued(names[1], per_queue)
    weights = [s.partition(":")[2] for s in spec] if spec else ["", ""]
    queues = [n + (f":{w}" if w else "") for n, w in zip(names, weights, strict=True)]
    config: dict[str, object] = {"queues": queues, "concurrency": concurrency}
    if strict:
        config["strict"] = True
    env = os.environ | {"CONVEYOR_URL": url, "CONVEYOR_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "conveyor.worker.process", "conveyor.benchmark:app", json.dumps(config)]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(processes)]
    try:
        deadline = time.monotonic() + 600
        while sum(_succeeded(q) for q in names) < per_queue and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    starts = sorted(
        (j.started_at or 0.0, q)
        for q in names
        for j in app.broker.jobs(queue=q, state="succeeded", limit=2 * per_queue)
    )[:per_queue]
    got = {q: sum(1 for _, s in starts if s == q) for q in names}
    print(
        f"split {url.split('://', maxsplit=1)[0]} processes={processes} concurrency={concurrency} "
        f"queues={','.join(queues)}{' strict' if strict else ''}: of the first {len(starts)} starts "
        + ", ".join(f"{q.split('-')[0]} {n} ({100 * n / max(1, len(starts)):.1f} %)" for q, n in got.items())
    )


def reserve(url: str, jobs: int, limit: int) -> None:
    run = uuid.uuid4().hex[:6]
    names = [f"ra-{run}", f"rb-{run}"]
    for q in names:
        _queued(q, jobs)
    fairness = Fairness(app.priorities.weights)
    calls = max(1, (jobs // limit) // 2)
    started = time.perf_counter()
    got = sum(len(app.broker.reserve(names, limit, 600.0, "bench", fairness)) for _ in range(calls))
    seconds = time.perf_counter() - started
    print(
        f"reserve {url.split('://', maxsplit=1)[0]} limit={limit}: {got / seconds:,.0f} jobs/s, "
        f"{calls / seconds:,.0f} reservations/s ({calls} reservations)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--per-queue", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--queues-spec", default="", help="weights as a:3,b:1 (names are replaced)")
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--reserve-jobs", type=int, default=0, help="jobs per queue for the reserve timing")
    parser.add_argument("--limit", type=int, default=1)
    args = parser.parse_args()
    os.environ["CONVEYOR_URL"] = args.url
    app.close()
    app.url = args.url
    if args.reserve_jobs:
        reserve(args.url, args.reserve_jobs, args.limit)
    else:
        spec = [s for s in args.queues_spec.split(",") if s]
        split(args.url, args.per_queue, args.processes, args.concurrency, spec, args.strict)
    app.close()


if __name__ == "__main__":
    main()
