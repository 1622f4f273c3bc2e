"""What ``max_queued`` costs an enqueue: producer throughput with and without caps, per store.

One producer thread enqueues no-op jobs into one queue through ``Conveyor``, for ``--seconds``
one by one (``task.enqueue()``) and then in batches of 1000 (``enqueue_many``), in each mode:

- ``base``: the code before ``max_queued`` (``--base-src``, e.g. ``git archive`` of the previous
  commit's ``src``), no caps;
- ``uncapped``: this code, no caps (what every queue without a cap pays);
- ``other``: this code, a cap on another queue only (a capped app's uncapped queues);
- ``capped0``: this code, this queue capped at 10 million, starting empty (the check's fixed
  cost: PostgreSQL's advisory lock and a transaction of its own);
- ``capped``: this code, this queue capped at 10 million and already holding ``--backlog``
  pending jobs (the SQL stores count the queue's pending jobs on each enqueue: the cost grows
  with the backlog; Redis reads its counts hash).

Each mode runs in a fresh process on a fresh store, modes alternated, ``--runs`` times; the
figures are medians, each with its ratio to ``base``.

    .venv/bin/python bench/enqueue_cap.py --base-src /tmp/base/src [--runs 3] [--seconds 2]
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

MODES = ("base", "uncapped", "other", "capped0", "capped")
STORES = {
    "sqlite": "sqlite:///{tmp}/bench-cap-{tag}.db",
    "postgres": "postgresql://postgres@127.0.0.1:5432/test?schema=bench_cap_{tag}",
    "redis": "redis://127.0.0.1:6379/12?prefix=bench-cap-{tag}",
}


def one_run(url: str, mode: str, seconds: float, backlog: int) -> dict[str, float]:
    """In a child process: the rates of one mode on a fresh store at ``url``."""
    from conveyor import Conveyor

    caps = {"capped": {"q": 10_000_000}, "capped0": {"q": 10_000_000}, "other": {"elsewhere": 10}}.get(mode)
    app = Conveyor(url, max_queued=caps) if caps else Conveyor(url)

    @app.task(queue="q", name="noop")
    def noop(n: int) -> None: ...

    for start in range(0, backlog, 1000):
        app.enqueue_many(noop.message(i) for i in range(start, min(backlog, start + 1000)))
    rates = {}
    for name, batch in (("one_by_one", 1), ("batched", 1000)):
        n, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            if batch == 1:
                noop.enqueue(n)
            else:
                app.enqueue_many(noop.message(n + i) for i in range(batch))
            n += batch
        rates[name] = n / (time.perf_counter() - began)
    _drop(app, url)
    return rates


def _drop(app: object, url: str) -> None:
    if url.startswith("postgresql"):
        import psycopg

        schema = url.rsplit("schema=", 1)[1]
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    elif url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url.split("?", maxsplit=1)[0])
        prefix = url.rsplit("prefix=", 1)[1]
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.unlink(*keys[i : i + 500])
    else:
        path = url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm", "-writer.lock"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-src", required=True, help="src/ of the code before max_queued")
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=3, metavar=("URL", "MODE", "BACKLOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, mode, backlog = args.child
        print(json.dumps(one_run(url, mode, args.seconds, int(backlog))))
        return
    here = Path(__file__).resolve().parents[1] / "src"
    results: dict[str, dict[str, dict[str, float]]] = {}
    for store in args.stores.split(","):
        samples: dict[str, dict[str, list[float]]] = {m: {"one_by_one": [], "batched": []} for m in MODES}
        for run in range(args.runs):
            order = MODES if run % 2 == 0 else MODES[::-1]
            for mode in order:
                tag = f"{os.getpid()}_{run}_{mode}"
                url = STORES[store].format(tmp="/tmp", tag=tag)
                src = args.base_src if mode == "base" else str(here)
                backlog = args.backlog if mode == "capped" else 0
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--base-src",
                        args.base_src,
                        "--seconds",
                        str(args.seconds),
                        "--child",
                        url,
                        mode,
                        str(backlog),
                    ],
                    env=os.environ | {"PYTHONPATH": src},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                for k, v in json.loads(out.stdout).items():
                    samples[mode][k].append(v)
        results[store] = {m: {k: statistics.median(v) for k, v in s.items()} for m, s in samples.items()}
        r = results[store]
        for kind in ("one_by_one", "batched"):
            base = r["base"][kind]
            print(
                f"{store:8} {kind:10} base {base:8.0f}/s"
                + "".join(f"  {m} {r[m][kind]:8.0f}/s ({r[m][kind] / base:.2f})" for m in MODES[1:]),
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
