"""Compare the Redis scripts of this tree with another tree's, call by call, on a server of one's
own: the enqueue, reserve and ack scripts of each run alternately (A, B, A, B, ...) on two
queues holding the same jobs, and each call's server time is read from INFO commandstats. A
busy host slows both sides alike, which back-to-back runs of a benchmark cannot promise.

    python bench/script_ab.py redis://127.0.0.1:6399/0 --other /path/to/other/src [--tasks N]

The server's statistics are reset: use a private server (``redis-server --port 6399``). Jobs
are without limits (the question is what the tree costs queues that do not use them), or with a
never-binding limit on one key (``--groups N``: on N keys, so N groups take turns) when
``--limited`` (this tree only: then both sides run this tree, one queue limited, one not).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
from pathlib import Path
from typing import Any

import msgspec
from redis import Redis

from conveyor.brokers.redis import scripts as this_scripts
from conveyor.brokers.redis.wire import packed_messages, packed_outcomes
from conveyor.ids import new_id
from conveyor.records import Message, Rule

BATCH = 500
CLAIM = 32


class Side:
    """One tree's scripts on one queue."""

    def __init__(self, client: Redis, source_dir: Path, prefix: str, fields: int) -> None:
        lib = (source_dir / "lib.lua").read_text()
        self.client, self.fields = client, fields
        self.sha: dict[str, str] = {}
        for name in ("enqueue", "reserve", "ack"):
            src = lib + "\n" + (source_dir / f"{name}.lua").read_text()
            self.sha[name] = hashlib.sha1(src.encode()).hexdigest()
            client.script_load(src)
        self.base = f"{prefix}:{{q-{os.urandom(3).hex()}}}"
        self.times: dict[str, list[float]] = {"enqueue": [], "reserve": [], "ack": []}

    def keys(self, *names: str) -> list[str]:
        return [f"{self.base}:{n}" for n in names]

    def call(self, name: str, keys: list[str], args: list[Any], tasks: int) -> Any:
        before = _usec(self.client)
        reply = self.client.evalsha(self.sha[name], len(keys), *keys, *args)
        self.times[name].append((_usec(self.client) - before) / max(1, tasks))
        return reply


def _usec(client: Redis) -> float:
    return float(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--other", type=Path, help="the other tree's src directory")
    parser.add_argument("--other-fields", type=int, default=10, help="its reply fields per delivery")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--limited", action="store_true")
    parser.add_argument("--groups", type=int, default=1, help="with --limited: keys (groups) to spread over")
    args = parser.parse_args()
    client = Redis.from_url(args.url)
    client.config_resetstat()
    here = Path(this_scripts.__file__).parent
    other = here if args.limited else args.other / "conveyor" / "brokers" / "redis"
    prefix = f"ab-{os.urandom(3).hex()}"
    sides = {"this": Side(client, here, prefix, 11), "other": Side(client, other, prefix, args.other_fields)}
    if args.limited:
        sides = {"limited": sides["this"], "none": sides["other"]}
        sides["none"].fields = 11
    rules = [
        (Rule(key=f"acct:{g}", rate=1_000_000.0, burst=1_000_000, concurrency=1_000_000),)
        for g in range(args.groups)
    ]
    for start in range(0, args.tasks, BATCH):
        for name, side in sides.items():
            batch = [
                Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[[],{}]")
                for _ in range(min(BATCH, args.tasks - start))
            ]
            if name == "limited":
                batch = [
                    msgspec.structs.replace(m, limits=rules[i % args.groups]) for i, m in enumerate(batch)
                ]
            side.call(
                "enqueue", side.keys("jobs", "keys", "counts"), ["", *packed_messages(batch)], len(batch)
            )
    left = dict.fromkeys(sides, args.tasks)
    while any(left.values()):
        for side_name, side in sides.items():
            if not left[side_name]:
                continue
            reserve_args = ["", "60.0", "w", "fair", CLAIM, 6, 0, 3, 0, 1, 0]
            reply = side.call("reserve", side.keys("jobs", "running", "counts"), reserve_args, CLAIM)
            rows = reply[1 + reply[0] :]
            leases = [[rows[i].decode(), rows[i + 6]] for i in range(0, len(rows), side.fields)]
            left[side_name] -= len(leases)
            keys = side.keys("jobs", "keys", "counts", "running", "dead", "done")
            side.call("ack", keys, ["", "3600", packed_outcomes(leases)], len(leases))
    names = list(sides)
    print(f"server µs per task, median of calls ({args.tasks} tasks): {names[0]} vs {names[1]}")
    for op in ("enqueue", "reserve", "ack"):
        a, b = (statistics.median(sides[n].times[op]) for n in names)
        print(f"  {op:8} {a:6.2f} vs {b:6.2f}  ratio {a / b:.3f}")
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.unlink(key)


if __name__ == "__main__":
    main()
