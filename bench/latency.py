"""Start delay of high-priority tasks behind a low-priority backlog.

Fills the queue with a backlog of low-priority tasks that each take --task-ms, starts W
worker processes, then every 20 ms enqueues one high-priority no-op while the backlog drains,
and reports the start delay (due → started, both on the store's clock) of the high tasks, p50
and p99, plus the same for delayed tasks (due time → started).

    python bench/latency.py [--url sqlite:////tmp/conveyor-latency.db] [--backlog 20000] [--samples 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from throughput import HERE, fresh_url


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="sqlite:////tmp/conveyor-latency.db")
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--task-ms", type=float, default=10.0, help="run time of each backlog task")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args()

    os.environ["CONVEYOR_URL"] = fresh_url(args.url)
    sys.path.insert(0, str(HERE))
    import bench_app

    app = bench_app.app
    app.close()
    app.url = args.url
    for start in range(0, args.backlog, 1000):
        app.enqueue_many(
            bench_app.work.message(args.task_ms / 1000, priority="low")
            for _ in range(start, min(args.backlog, start + 1000))
        )
    env = os.environ | {"PYTHONPATH": str(HERE), "CONVEYOR_LOG_LEVEL": "WARNING"}
    config = json.dumps({"queues": ["bench"], "concurrency": args.concurrency})
    procs = [
        subprocess.Popen([sys.executable, "-m", "conveyor.worker.process", "bench_app:app", config], env=env)
        for _ in range(args.workers)
    ]
    try:
        while app.broker.stats(["bench"])[0].total("running") == 0:
            time.sleep(0.01)
        high = []
        delayed = []
        for i in range(args.samples):
            high.append(bench_app.noop.enqueue(i, priority="high"))
            delayed.append(bench_app.noop.enqueue(i, priority="high", delay=0.05))
            time.sleep(0.02)
        backlog_left = app.broker.stats(["bench"])[0].counts.get("ready", {})
        results = {}
        for name, jobs in (("high", high), ("delayed_high", delayed)):
            delays = []
            for job in jobs:
                job.result(timeout=60)
                info = job.info()
                assert info.started_at is not None
                delays.append((info.started_at - info.run_at) * 1000)
            results[name] = {
                "p50_ms": statistics.median(delays),
                "p99_ms": percentile(delays, 0.99),
                "max_ms": max(delays),
            }
        results["low_backlog_ready_after"] = sum(backlog_left.values())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        app.close()
    print(
        f"{args.url.split(':')[0]} backlog={args.backlog} workers={args.workers}: "
        f"high start delay p50 {results['high']['p50_ms']:.1f} ms, p99 {results['high']['p99_ms']:.1f} ms; "
        f"delayed high p50 {results['delayed_high']['p50_ms']:.1f} ms, "
        f"p99 {results['delayed_high']['p99_ms']:.1f} ms; "
        f"low tasks still ready at the end: {results['low_backlog_ready_after']}",
        flush=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
