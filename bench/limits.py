"""Limits through real worker processes (docs/flow-control.md), on any store:

- rate: a backlog of a task with ``Limit(rate=R, burst=B)`` drained by ``--rate-workers``
  worker processes; the requested rate against the achieved one, ``(N - B) / (last start - first
  start)`` (the burst starts at once, then one start every ``1/R``), and the most starts seen in
  any window of 1 s and of 100 ms against the bound ``R·t + B``. Starts are the store's
  ``started_at`` (the claim, by the store's clock), which is what the bound is about.
- throughput: ``--tasks`` no-ops enqueued in batches with no worker running, then drained by
  ``--workers`` worker processes (from the first worker up to the last success), three ways:
  without limits ("none"), with a limit that never binds ("loose": a rate of 10^6/s and a
  concurrency of 10^5, far above what the workers reach and their slots), and spread over 1,000
  keys ("keys": ``Limit(key="tenant:{tenant}", concurrency=1000)``, 1,000 tenants, each its own
  group). Reported: enqueue/s, drain/s, end to end/s (N over enqueue time + drain time), and each
  limited case's ratio to "none".
- fairness: tenant A queues ``--backlog`` jobs; once the workers are draining it, tenant B
  enqueues ``--small`` jobs. Reported: B's start delays (``started_at - enqueued_at``, store
  clock) p50 / max, and the starts of A between B's enqueue and each B start (the most of them,
  and the most less B's own rank: a turn per B job plus what workers had claimed already);
  with the tenants as limit keys ("keys") and without limits ("none": one FIFO, B waits behind
  the rest of A). The workers then drain A: nothing is left queued.

Each measurement is repeated ``--repeat`` times (cases interleaved); tables show the medians, and
for the window counts the worst run. Every run uses fresh queue names, so limit keys (scoped to
their queue) start with full buckets. Finished jobs are kept ten minutes; each start purges
earlier runs' expired jobs. Workers are ``python -m conveyor.worker.process limits:app`` with this
directory on their path (this file is also the tasks' module). No thresholds: read the figures.

    .venv/bin/python bench/limits.py sqlite:////tmp/bench-limits.db [--json out.json]
    .venv/bin/python bench/limits.py redis://127.0.0.1:6379/15 --only rate --rates 500:50

Figures on a shared machine are noisy: compare runs made one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conveyor import Conveyor, Limit
from conveyor.app import Task

try:
    from conveyor.limits import default_burst
except ImportError:  # a version whose default burst was 1

    def default_burst(rate: float) -> int:
        return 1


HERE = Path(__file__).resolve().parent

#: The tasks' app; worker processes import this file as ``limits`` with CONVEYOR_URL set.
app = Conveyor(retention=600.0)

#: Rates (``R:B,...``) the rate tasks are declared with: set by the runner for its workers.
RATES_ENV = "CONVEYOR_BENCH_LIMIT_RATES"


def noop(n: int, tenant: int = 0) -> None:
    """Does nothing: what is measured is the queue's work."""


plain = app.task(name="lbench.plain", queue="lbench")(noop)
loose = app.task(
    name="lbench.loose", queue="lbench", limits=[Limit(rate=1_000_000.0, burst=1000, concurrency=100_000)]
)(noop)
keyed = app.task(name="lbench.keys", queue="lbench", limits=[Limit(key="tenant:{tenant}", concurrency=1000)])(
    noop
)


def rated(rate: float, burst: int | None) -> Task[Any, Any]:
    """The task limited to ``rate`` per second with ``burst`` (None: the default burst),
    declared on first use."""
    name = f"lbench.rate.{rate:g}.{burst or 'default'}"
    existing = app.tasks.get(name)
    if existing is not None:
        return existing
    return app.task(name=name, queue="lbench", limits=[Limit(rate=rate, burst=burst)])(noop)


def _parse_rates(text: str) -> list[tuple[float, int | None]]:
    """``R:B,...`` pairs; ``R`` alone (or ``R:``) is the rate with the default burst (None)."""
    pairs: list[tuple[float, int | None]] = []
    for item in text.split(","):
        if item.strip():
            rate, _, burst = item.partition(":")
            pairs.append((float(rate), int(burst) if burst.strip() else None))
    return pairs


for _rate, _burst in _parse_rates(os.environ.get(RATES_ENV, "")):
    rated(_rate, _burst)


# -- running workers and waiting for them ----------------------------------------------------------


class Runner:
    def __init__(
        self, url: str, workers: int, concurrency: int, rates: Sequence[tuple[float, int | None]]
    ) -> None:
        self.url = url
        self.workers_n = workers
        self.concurrency = concurrency
        self.rates_env = ",".join(f"{r:g}:{b or ''}" for r, b in rates)
        self.procs: list[subprocess.Popen[bytes]] = []
        os.environ["CONVEYOR_URL"] = url
        app.close()
        app.url = url
        while app.broker.expire() >= 1000:
            pass

    @contextmanager
    def workers(self, queue: str, count: int) -> Iterator[None]:
        """``count`` worker processes serving ``queue``, stopped after the body."""
        config = json.dumps({"queues": [queue], "concurrency": self.concurrency})
        env = os.environ | {
            "CONVEYOR_URL": self.url,
            "CONVEYOR_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            RATES_ENV: self.rates_env,
        }
        cmd = [sys.executable, "-m", "conveyor.worker.process", "limits:app", config]
        procs = [subprocess.Popen(cmd, env=env) for _ in range(count)]
        self.procs = procs
        try:
            yield
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def serving(self, queue: str, timeout: float = 60) -> float:
        """When a first worker serving ``queue`` registered (perf_counter)."""
        deadline = time.monotonic() + timeout
        while not any(queue in w.queues for w in app.broker.workers()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue}: no worker up after {timeout} s")
            time.sleep(0.001)
        return time.perf_counter()

    def finished(self, queue: str, count: int, last: str | None = None, timeout: float = 900) -> float:
        """When ``count`` jobs of ``queue`` have succeeded (perf_counter). With ``last`` (the job
        expected to finish last), polls that job (a key lookup) before counting: counting costs
        SQL stores a scan, which polled often would take a core from the run it measures."""
        deadline = time.monotonic() + timeout
        if last is not None:
            while (info := app.broker.get(last)) is None or info.state != "succeeded":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{queue}: job {last} not done after {timeout} s")
                time.sleep(0.001)
        done = time.perf_counter()
        while _succeeded(queue) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue}: fewer than {count} succeeded after {timeout} s")
            time.sleep(0.02)
            done = time.perf_counter()
        return done


def _cpu(procs: Sequence[subprocess.Popen[bytes]]) -> float | None:
    """CPU seconds (user + system) the processes have used so far (Linux: /proc), else None."""
    total = 0.0
    for p in procs:
        try:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _succeeded(queue: str) -> int:
    return app.broker.stats([queue])[0].total("succeeded")


def _fresh(kind: str) -> str:
    return f"lbench-{kind}-{uuid.uuid4().hex[:8]}"


def _enqueue(task: Task[Any, Any], queue: str, n: int, tenants: int = 1, tenant: int | None = None) -> str:
    """``n`` jobs in batches of 1000; returns the last one's id."""
    last = ""
    for start in range(0, n, 1000):
        jobs = app.enqueue_many(
            task.message(i, tenant if tenant is not None else i % tenants, queue=queue)
            for i in range(start, min(n, start + 1000))
        )
        last = jobs[-1].id
    return last


def _starts(queue: str, n: int) -> list[float]:
    return sorted(j.started_at or 0.0 for j in app.broker.jobs(queue=queue, state="succeeded", limit=n))


def _most_in_window(starts: Sequence[float], window: float) -> int:
    """The most starts in any half-open window of length ``window`` (starts sorted)."""
    most, j = 0, 0
    for i, first in enumerate(starts):
        while j < len(starts) and starts[j] < first + window:
            j += 1
        most = max(most, j - i)
    return most


# -- the three measurements ----------------------------------------------------------------------


def rate_run(
    runner: Runner, rate: float, declared: int | None, seconds: float, workers: int
) -> dict[str, Any]:
    queue = _fresh("rate")
    burst = declared or default_burst(rate)
    n = burst + int(rate * seconds)
    last = _enqueue(rated(rate, declared), queue, n)
    with runner.workers(queue, workers):
        runner.finished(queue, n, last, timeout=60 + 3 * seconds)
    starts = _starts(queue, n)
    span = starts[-1] - starts[0]
    return {
        "rate": rate,
        "burst": burst,
        "burst_declared": declared is not None,
        "jobs": n,
        "workers": workers,
        "span_s": span,
        "ideal_span_s": (n - burst) / rate,
        "achieved_per_s": (n - burst) / span if span > 0 else float("inf"),
        "max_in_1s": _most_in_window(starts, 1.0),
        "bound_1s": rate * 1.0 + burst,
        "max_in_100ms": _most_in_window(starts, 0.1),
        "bound_100ms": rate * 0.1 + burst,
    }


CASES = {"none": plain, "loose": loose, "keys": keyed}


def throughput_run(runner: Runner, case: str, n: int) -> dict[str, Any]:
    queue = _fresh(f"tp-{case}")
    t0, c0 = time.perf_counter(), time.process_time()
    last = _enqueue(CASES[case], queue, n, tenants=1000)
    enqueue_s, enqueue_cpu = time.perf_counter() - t0, time.process_time() - c0
    with runner.workers(queue, runner.workers_n):
        t1 = runner.serving(queue)
        # Each worker has imported the app once it answers: its CPU from here on is the drain's.
        while len([w for w in app.broker.workers() if queue in w.queues]) < runner.workers_n:
            time.sleep(0.001)
        cpu0 = _cpu(runner.procs)
        drain_s = runner.finished(queue, n, last) - t1
        cpu1 = _cpu(runner.procs)
    drain_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return {
        "case": case,
        "jobs": n,
        "enqueue_per_s": n / enqueue_s,
        "drain_per_s": n / drain_s,
        "end_to_end_per_s": n / (enqueue_s + drain_s),
        # CPU per job: the producer's for enqueue, the worker processes' for the drain (the
        # whole store's work on SQLite; a server's own CPU is not counted).
        "enqueue_cpu_us": 1e6 * enqueue_cpu / n,
        "drain_cpu_us": None if drain_cpu is None else 1e6 * drain_cpu / n,
    }


def fairness_run(runner: Runner, case: str, backlog: int, small: int) -> dict[str, Any]:
    queue = _fresh(f"fair-{case}")
    task = CASES[case]
    last_a = _enqueue(task, queue, backlog, tenant=0)
    with runner.workers(queue, runner.workers_n):
        while _succeeded(queue) < min(200, backlog // 10):
            time.sleep(0.01)
        b = app.enqueue_many(task.message(i, 1, queue=queue) for i in range(small))
        for job in b:
            while job.info().state != "succeeded":
                time.sleep(0.005)
        a_left = backlog - _succeeded(queue) + small
        runner.finished(queue, backlog + small, last_a)
    b_ids = {job.id for job in b}
    infos = [job.info() for job in b]
    enqueued = min(i.enqueued_at for i in infos)
    b_starts = sorted(i.started_at or 0.0 for i in infos)
    a_starts = sorted(
        j.started_at or 0.0
        for j in app.broker.jobs(queue=queue, state="succeeded", limit=backlog + small)
        if j.id not in b_ids and (j.started_at or 0.0) > enqueued
    )
    before, j = [], 0
    for start in b_starts:
        while j < len(a_starts) and a_starts[j] < start:
            j += 1
        before.append(j)
    delays = sorted(1000 * ((i.started_at or 0.0) - i.enqueued_at) for i in infos)
    return {
        "case": case,
        "backlog": backlog,
        "small": small,
        "a_left_when_b_done": a_left,
        "b_delay_p50_ms": statistics.median(delays),
        "b_delay_max_ms": delays[-1],
        "a_starts_before_last_b": before[-1],
        "a_starts_before_b_max_over_rank": max(n - k for k, n in enumerate(before, 1)),
    }


# -- driver --------------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("--only", choices=["rate", "throughput", "fairness"], action="append")
    parser.add_argument(
        "--rates", default="500:50,50:5,50:1", help="R:B pairs (starts/s : burst); R alone: the default burst"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="backlog of a rate run, in seconds of R")
    parser.add_argument("--rate-workers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (throughput, fairness)")
    parser.add_argument("--concurrency", type=int, default=32, help="task slots per worker process")
    parser.add_argument("--tasks", type=int, default=20_000, help="jobs per throughput run")
    parser.add_argument("--backlog", type=int, default=20_000, help="tenant A's jobs (fairness)")
    parser.add_argument("--small", type=int, default=20, help="tenant B's jobs (fairness)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write every run and the medians here")
    args = parser.parse_args()
    only = set(args.only or ["rate", "throughput", "fairness"])
    rates = _parse_rates(args.rates)
    for r, b in rates:
        rated(r, b)
    runner = Runner(args.url, args.workers, args.concurrency, rates)
    store = args.url.split(":", 1)[0]
    out: dict[str, Any] = {"url": args.url, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    out["settings"] = {k: v for k, v in vars(args).items() if k not in ("url", "json")}
    print(
        f"# limits on {store}: {args.workers} worker processes x {args.concurrency} slots; medians of {args.repeat}"
    )

    if "rate" in only:
        rows = []
        for rate, burst in rates:
            runs = [
                rate_run(runner, rate, burst, args.seconds, args.rate_workers) for _ in range(args.repeat)
            ]
            rows.append(
                {"rate": rate, "burst": runs[0]["burst"], "declared": burst is not None, "runs": runs}
            )
        out["rate"] = rows
        print(f"\nrate ({args.rate_workers} worker processes, a backlog of {args.seconds:g} s of R + B)")
        print(
            "requested R/s  burst  achieved/s   used   max in 1 s (bound)  max in 100 ms (bound)   (* default)"
        )
        for row in rows:
            runs, rate = row["runs"], row["rate"]
            achieved = _median(runs, "achieved_per_s")
            row["achieved_per_s"] = achieved
            row["max_in_1s"] = max(r["max_in_1s"] for r in runs)
            row["max_in_100ms"] = max(r["max_in_100ms"] for r in runs)
            print(
                f"{rate:14,.0f}  {str(row['burst']) + ('' if row['declared'] else '*'):>5}  {achieved:10,.1f}  {100 * achieved / rate:5.1f} %  "
                f"{row['max_in_1s']:8} ({runs[0]['bound_1s']:,.0f})  "
                f"{row['max_in_100ms']:12} ({runs[0]['bound_100ms']:,.0f})"
            )

    if "throughput" in only:
        runs = [throughput_run(runner, case, args.tasks) for _ in range(args.repeat) for case in CASES]
        table = {}
        for case in CASES:
            mine = [r for r in runs if r["case"] == case]
            keys = ["enqueue_per_s", "drain_per_s", "end_to_end_per_s", "enqueue_cpu_us"]
            keys += ["drain_cpu_us"] if all(r["drain_cpu_us"] is not None for r in mine) else []
            table[case] = {k: _median(mine, k) for k in keys}
        for case in CASES:
            for k in ("enqueue_per_s", "drain_per_s", "end_to_end_per_s"):
                table[case][k.replace("_per_s", "_ratio")] = table[case][k] / table["none"][k]
        out["throughput"] = {"runs": runs, "medians": table}
        print(f"\nthroughput ({args.tasks:,} no-ops, {args.workers} worker processes; ratio to none)")
        print("case    enqueue/s          drain/s            end to end/s     CPU µs/job enqueue + drain")
        for case, t in table.items():
            drain_cpu = f"{t['drain_cpu_us']:6.1f}" if "drain_cpu_us" in t else "     -"
            print(
                f"{case:6} {t['enqueue_per_s']:9,.0f} ({t['enqueue_ratio']:.2f})  "
                f"{t['drain_per_s']:9,.0f} ({t['drain_ratio']:.2f})  "
                f"{t['end_to_end_per_s']:9,.0f} ({t['end_to_end_ratio']:.2f})   "
                f"{t['enqueue_cpu_us']:6.1f} + {drain_cpu}"
            )

    if "fairness" in only:
        cases = ["keys", "none"]
        runs = [fairness_run(runner, c, args.backlog, args.small) for _ in range(args.repeat) for c in cases]
        medians = {}
        keys = (
            "b_delay_p50_ms",
            "b_delay_max_ms",
            "a_starts_before_last_b",
            "a_starts_before_b_max_over_rank",
        )
        for c in cases:
            mine = [r for r in runs if r["case"] == c]
            medians[c] = {k: _median(mine, k) for k in keys}
        out["fairness"] = {"runs": runs, "medians": medians}
        print(
            f"\nfairness (tenant A: {args.backlog:,} queued; B enqueues {args.small} while A drains; "
            f"{args.workers} worker processes)"
        )
        print("case   B delay p50 ms   max ms   A starts before B's last   max (A before B's k-th) - k")
        for c, m in medians.items():
            print(
                f"{c:5} {m['b_delay_p50_ms']:15,.1f} {m['b_delay_max_ms']:8,.1f} "
                f"{m['a_starts_before_last_b']:26,.0f} {m['a_starts_before_b_max_over_rank']:29,.0f}"
            )
    app.close()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
