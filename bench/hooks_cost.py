"""Cost of hooks and headers on the worker's hot path (docs/hooks.md), as CPU time per job.

Two measurements, each run in a fresh subprocess per round, the code under test and a baseline
tree alternating round by round (``--base SRC`` is the ``src`` directory of the baseline, e.g.
an extracted ``git archive`` of main):

- ``runner``: the worker's executor alone (conveyor.worker.executor.Runner) running N no-op sync
  deliveries on its task thread, no store: process CPU per job. Cases: ``none`` (no hooks),
  ``hook`` (one run hook that does nothing), ``otel`` (OpenTelemetry with an SDK tracer
  provider and no exporter).
- ``store``: reserve 32 + acknowledge, the worker's store cycle, for N jobs without headers:
  the client's CPU per job plus the store server's (PostgreSQL: the connection's backend
  process; Redis: the server process, best on a private server; SQLite: in the client).

    .venv/bin/python bench/hooks_cost.py runner --base /tmp/base/src [--rounds 7] [--n 20000]
    .venv/bin/python bench/hooks_cost.py store URL [BASE_URL] --base /tmp/base/src [--redis-pid PID]

(BASE_URL: the baseline's store, e.g. a PostgreSQL schema of its own, which its older
migrations keep.)

Prints per case the median, the 10th percentile and the minimum over rounds, in microseconds of
CPU per job; on a loaded machine the low percentiles are the steadier figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runner_round(case: str, n: int) -> float:
    from conveyor import Conveyor
    from conveyor.ids import new_id
    from conveyor.records import Delivery
    from conveyor.worker.executor import Runner

    app = Conveyor("sqlite:////tmp/conveyor-hooks-bench-unused.db")

    @app.task(name="noop")
    def noop() -> None: ...

    if case == "hook":
        from conveyor import Hook

        class Nothing(Hook):
            @contextlib.contextmanager
            def run(self, job: Any) -> Iterator[None]:
                yield

        app.hooks.append(Nothing())
    elif case == "otel":
        from opentelemetry.sdk.trace import TracerProvider

        from conveyor.otel import OpenTelemetry

        app.hooks.append(OpenTelemetry(tracer_provider=TracerProvider()))
    deliveries = [Delivery(new_id(), "noop", "default", 1, b"[[],{}]", 1, 3, 1, 0.0, 0.0) for _ in range(n)]

    async def main() -> float:
        done = asyncio.get_running_loop().create_future()
        count = 0

        def finished(batch: list[Any]) -> None:
            nonlocal count
            count += len(batch)
            if count >= n and not done.done():
                done.set_result(None)

        runner = Runner(app, "bench", finished, threads=1)
        t = time.process_time()
        for i in range(0, n, 64):  # as the loop starts them: a reservation at a time
            for d in deliveries[i : i + 64]:
                runner.start(d)
            await asyncio.sleep(0)
        await done
        spent = time.process_time() - t
        runner.shutdown()
        return spent / n

    return asyncio.run(main())


def store_round(url: str, n: int, redis_pid: int | None) -> float:
    from conveyor.brokers import open_broker
    from conveyor.ids import new_id
    from conveyor.priority import Fairness
    from conveyor.records import Message, Outcome

    broker = open_broker(url)
    queue = f"hb-{new_id()[-8:]}"
    for start in range(0, n, 500):
        broker.enqueue(
            [
                Message(id=new_id(), task="noop", queue=queue, priority=1, payload=b"[[],{}]")
                for _ in range(min(500, n - start))
            ]
        )
    server = None
    if url.startswith("postgres"):
        with broker._connect() as conn:  # type: ignore[attr-defined]  # the pool hands this one back
            server = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    elif url.startswith("redis"):
        server = redis_pid
    fairness = Fairness((6, 3, 1))
    server_before = _proc_cpu(server) if server else 0.0
    t = time.process_time()
    done = 0
    while done < n:
        got = broker.reserve([queue], 32, 30.0, "bench", fairness)
        assert got
        broker.ack([Outcome(d.id, d.token, "succeeded") for d in got])
        done += len(got)
    spent = time.process_time() - t + ((_proc_cpu(server) - server_before) if server else 0.0)
    broker.close()
    return spent / n


def _one(src: str | None, args: list[str]) -> float:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    done = subprocess.run(
        [sys.executable, __file__, "_round", *args], env=env, check=False, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"a round failed: {args}\n{done.stderr}")
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["runner", "store", "_round"])
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--base", default=None, help="src directory of the baseline tree")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--redis-pid", type=int, default=None)
    a = parser.parse_args()
    if a.what == "_round":
        kind, *params = a.rest
        if kind == "runner":
            print(json.dumps(runner_round(params[0], a.n)))
        else:
            print(json.dumps(store_round(params[0], a.n, a.redis_pid)))
        return
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    if a.what == "runner":
        variants = [("base none", a.base, ["runner", "none"])] if a.base else []
        variants += [(f"this {c}", here, ["runner", c]) for c in ("none", "hook", "otel")]
    else:
        extra = ["--redis-pid", str(a.redis_pid)] if a.redis_pid else []
        base_url = a.rest[1] if len(a.rest) > 1 else a.rest[0]  # e.g. another PostgreSQL schema
        variants = [("base", a.base, ["store", base_url, *extra])] if a.base else []
        variants += [("this", here, ["store", a.rest[0], *extra])]
    results: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(a.rounds):
        for name, src, args in variants:
            results[name].append(_one(src, [*args, "--n", str(a.n)]))
    for name, values in results.items():
        us = [v * 1e6 for v in values]
        p10 = statistics.quantiles(us, n=10)[0] if len(us) >= 2 else us[0]
        print(
            f"{name:12} median {statistics.median(us):7.2f} us/job  p10 {p10:7.2f}  min {min(us):7.2f}"
            f"  ({len(us)} rounds)"
        )


if __name__ == "__main__":
    main()
