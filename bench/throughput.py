"""Throughput: enqueue N no-op tasks (batched, and one by one), then drain them with W worker
processes. Prints tasks/s and writes JSON. Store on this host; figures are noisy, compare ratios.

    python bench/throughput.py [--url sqlite:////tmp/bench.db] [--tasks 20000] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def fresh_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return url


def run(url: str, tasks: int, workers: int, concurrency: int, task_name: str) -> dict[str, float]:
    os.environ["CONVEYOR_URL"] = fresh_url(url)
    sys.path.insert(0, str(HERE))
    import bench_app

    app = bench_app.app
    app.close()
    app.url = url
    task = getattr(bench_app, task_name)
    broker = app.broker
    # Shared stores (PostgreSQL, Redis) keep earlier runs' finished jobs: count from here.
    before = broker.stats(["bench"])[0].total("succeeded")
    single = min(2000, tasks // 10)
    t0 = time.perf_counter()
    for i in range(single):
        task.enqueue(i)
    one_by_one = single / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for start in range(single, tasks, 1000):
        app.enqueue_many(task.message(i) for i in range(start, min(tasks, start + 1000)))
    batched = (tasks - single) / (time.perf_counter() - t0)

    env = os.environ | {"PYTHONPATH": str(HERE), "CONVEYOR_LOG_LEVEL": "WARNING"}
    config = json.dumps({"queues": ["bench"], "concurrency": concurrency})
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-m", "conveyor.worker.process", "bench_app:app", config], env=env)
        for _ in range(workers)
    ]
    while True:
        stats = broker.stats(["bench"])[0]
        if stats.total("succeeded") - before >= tasks:
            break
        time.sleep(0.02)
    drain = tasks / (time.perf_counter() - t0)
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
    app.close()
    return {"enqueue_one_by_one": one_by_one, "enqueue_batched": batched, "drain": drain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="sqlite:////tmp/conveyor-bench.db")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--task", default="noop", choices=["noop", "anoop"])
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args()
    results = []
    for w in (int(x) for x in args.workers.split(",")):
        r = run(args.url, args.tasks, w, args.concurrency, args.task)
        r["workers"] = w
        results.append(r)
        print(
            f"{args.task} x{args.tasks} workers={w}: enqueue {r['enqueue_one_by_one']:,.0f}/s one by one, "
            f"{r['enqueue_batched']:,.0f}/s batched; drain {r['drain']:,.0f}/s",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
