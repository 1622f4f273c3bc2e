"""One phase of the peer protocol for one peer, run inside that peer's own virtualenv.

    <venv>/bin/python bench/peers/harness.py PEER PHASE [--tasks N] [--backlog B] [--samples S] [--rate R]

PHASE is ``throughput``, ``priority``, ``delay`` or ``rate``. Prints one JSON object on the last line of stdout.
The peer's module ``peer_<PEER>.py`` (next to this file) gives the store, the enqueue calls and the
worker command; every task does the same one Redis round trip (``probe.py``), which is the completion
and timing signal for every peer alike. ``run.py`` drives this for every peer.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
WORKERS = 2
LOGS = Path(os.environ.get("PEERS_LOG_DIR", "/tmp/peers-bench-logs"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Workers:
    """WORKERS worker processes of the peer, each in its own process group, always killed."""

    def __init__(self, mod: Any, peer: str, phase: str) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"PYTHONPATH": str(HERE), "PEER_PHASE": phase}
        self.procs = []
        for i in range(WORKERS):
            with open(LOGS / f"{peer}-{phase}-{i}.log", "w") as log:
                self.procs.append(
                    subprocess.Popen(
                        mod.worker_cmd(phase),
                        cwd=HERE,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )

    def check(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"a worker exited with code {p.returncode}; see {LOGS}")

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # the whole group: children of forking workers too
            p.wait()


def wait_for(check: Any, timeout: float, workers: Workers | None = None, what: str = "") -> float:
    """Poll ``check()`` every 2 ms until true; returns the perf_counter time it became true."""
    deadline = time.perf_counter() + timeout
    n = 0
    while not check():
        now = time.perf_counter()
        if now > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        n += 1
        if workers is not None and n % 500 == 0:
            workers.check()
        time.sleep(0.002)
    return time.perf_counter()


def count(r: redis.Redis, key: str) -> int:
    return int(r.get(key) or 0)


def throughput(mod: Any, peer: str, r: redis.Redis, n: int) -> dict[str, Any]:
    batched = mod.ENQUEUE.startswith("batched")
    # with a batch API: the first tenth (at most 2,000) one by one too, for a like-for-like enqueue figure
    single = min(2000, n // 10) if batched else n
    t0 = time.perf_counter()
    for _ in range(single):
        mod.enqueue_one("n", 0.0)
    one_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if n > single:
        mod.enqueue_batch("n", n - single)
    batch_s = time.perf_counter() - t0
    enqueue_s = one_s + batch_s
    t1 = time.perf_counter()
    workers = Workers(mod, peer, "throughput")
    try:
        t_first = wait_for(lambda: count(r, "bench:n") >= 1, 120, workers, "the first task")
        c_first = count(r, "bench:n")
        t_end = wait_for(lambda: count(r, "bench:n") >= n, 900, workers, f"{n} tasks")
    finally:
        workers.stop()
    drain_s = t_end - t1
    return {
        "tasks": n,
        "enqueue_mode": mod.ENQUEUE,
        "enqueue_per_s": n / enqueue_s,  # all N, as enqueued (for batch APIs: mostly batched)
        "enqueue_one_by_one_per_s": single / one_s if single else None,
        "enqueue_batched_per_s": (n - single) / batch_s if n > single else None,
        "drain_per_s": n / drain_s,  # from spawning the workers: includes their start-up
        "drain_steady_per_s": (n - c_first) / max(1e-9, t_end - t_first),  # from the first finished task
        "worker_startup_s": t_first - t1,
        "e2e_per_s": n / (enqueue_s + drain_s),
    }


def priority(mod: Any, peer: str, r: redis.Redis, backlog: int, samples: int) -> dict[str, Any]:
    mod.enqueue_batch("l", backlog)
    workers = Workers(mod, peer, "priority")
    try:
        wait_for(lambda: count(r, "bench:l") >= 1, 120, workers, "the backlog to start draining")
        low_at_start = count(r, "bench:l")
        start = time.perf_counter()
        for i in range(samples):
            pause = start + i * 0.02 - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            mod.enqueue_one("h", time.time())
        elapsed = time.perf_counter() - start
        low_at_end = count(r, "bench:l")
        wait_for(lambda: r.llen("bench:h") >= samples, 300, workers, "the high tasks")
        wait_for(lambda: count(r, "bench:l") >= backlog, 600, workers, "the backlog")
    finally:
        workers.stop()
    delays = [float(x) * 1000 for x in r.lrange("bench:h", 0, -1)]
    return {
        "backlog": backlog,
        "samples": samples,
        "backlog_left_after_last_high": backlog - low_at_end,
        "backlog_drain_per_s_meanwhile": (low_at_end - low_at_start) / elapsed,
        "high_p50_ms": statistics.median(delays),
        "high_p99_ms": percentile(delays, 0.99),
        "high_max_ms": max(delays),
    }


def delay(mod: Any, peer: str, r: redis.Redis, samples: int) -> dict[str, Any]:
    workers = Workers(mod, peer, "delay")
    try:
        mod.enqueue_one("w", time.time())  # warm-up: the workers are up and serving
        wait_for(lambda: r.llen("bench:w") >= 1, 120, workers, "the warm-up task")
        for i in range(samples):
            # due 1-3 s ahead, spread evenly, enqueued in a shuffled order of due times
            due = time.time() + 1 + 2 * ((i * 73) % samples) / max(1, samples - 1)
            mod.enqueue_delayed(due)
        wait_for(lambda: r.llen("bench:d") >= samples, 120, workers, "the delayed tasks")
    finally:
        workers.stop()
    lateness = [float(x) * 1000 for x in r.lrange("bench:d", 0, -1)]
    return {
        "samples": samples,
        "late_p50_ms": statistics.median(lateness),
        "late_p99_ms": percentile(lateness, 0.99),
        "late_max_ms": max(lateness),
        "early": sum(1 for x in lateness if x < 0),
        "early_max_ms": -min(lateness) if min(lateness) < 0 else 0.0,
    }


def rate(mod: Any, peer: str, r: redis.Redis, per_second: float, n: int) -> dict[str, Any]:
    """``n`` tasks of a task declared with a rate limit of ``per_second`` (the peer's own rate
    limit: ``PEER_RATE`` in the environment of the peer's module and its workers), drained by the
    WORKERS worker processes, for at most twice the time the limit needs plus 30 s (a peer far
    below its limit is measured on what it started by then). Each task records when its body
    began (``RPUSH bench:r <time>``)."""
    mod.enqueue_batch("r", n)
    budget = 2 * n / per_second + 30
    workers = Workers(mod, peer, "rate")
    try:
        wait_for(lambda: r.llen("bench:r") >= 1, 120, workers, "the first rate-limited task")
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: r.llen("bench:r") >= n, budget, workers, f"{n} rate-limited tasks")
        if peer.startswith("conveyor"):  # its Redis db 13 is never flushed: drain the queue
            wait_for(lambda: r.llen("bench:r") >= n, 120, workers, "the rest of the rate-limited tasks")
    finally:
        workers.stop()
    starts = sorted(float(x) for x in r.lrange("bench:r", 0, -1))
    done = len(starts)
    span = starts[-1] - starts[0]
    most, j = 0, 0
    for i, first in enumerate(starts):  # the most starts in any window of 1 s
        while j < len(starts) and starts[j] < first + 1.0:
            j += 1
        most = max(most, j - i)
    achieved = (done - 1) / span if span > 0 else float("inf")
    return {
        "tasks": n,
        "started": done,
        "requested_per_s": per_second,
        "achieved_per_s": achieved,
        "achieved_over_requested": achieved / per_second,
        "max_in_1s": most,
        "span_s": span,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("peer")
    parser.add_argument("phase", choices=["throughput", "priority", "delay", "rate", "info"])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="the rate limit (tasks/s) of the rate phase")
    args = parser.parse_args()
    # SIGTERM (run.py giving up on a phase) unwinds through the finally blocks that stop the workers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ["PEER_PHASE"] = args.phase
    # read by the peer's module (and its workers) in the rate phase
    os.environ["PEER_RATE"] = f"{args.rate:g}"
    sys.path.insert(0, str(HERE))
    mod = importlib.import_module("peer_" + args.peer.split("-")[0])
    info = {
        k.lower(): getattr(mod, k, None)
        for k in ("STORE", "ENQUEUE", "CONCURRENCY", "PRIORITY", "DELAY", "RATE")
    }
    if args.phase == "info":
        print(json.dumps(info))
        return
    r = redis.Redis(host="127.0.0.1", port=6379, db=14)
    load_before = os.getloadavg()[0]
    r.flushdb()  # db 14 is the peers' own: their queues and the probe's keys
    if hasattr(mod, "setup"):
        mod.setup()
    try:
        if args.phase == "throughput":
            result = throughput(mod, args.peer, r, args.tasks)
        elif args.phase == "priority":
            result = priority(mod, args.peer, r, args.backlog, args.samples)
        elif args.phase == "rate":
            result = rate(mod, args.peer, r, args.rate, args.tasks)
        else:
            result = delay(mod, args.peer, r, args.samples)
    finally:
        if hasattr(mod, "close"):
            mod.close()
    result["loadavg_1m_before"] = load_before
    result["loadavg_1m_after"] = os.getloadavg()[0]  # this machine is shared: a busy phase shows here
    print(json.dumps(result))


if __name__ == "__main__":
    main()
