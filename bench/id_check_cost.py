"""What the unique-id check costs an enqueue on Redis (issue 26, finding 10).

Starts private servers through the test support (``tests/support/redis_servers.py``), on
loopback, and compares, interleaved in small blocks so the host's drift falls on both sides:

* one server: the enqueue script's server CPU per message (``INFO cpu``), called directly with
  the same packed messages, without the registry key (no cross-queue look-up), and with it while
  the store has the queue alone or 10 queues registered. ``--before SRC`` adds the enqueue
  script of another source tree (e.g. ``git archive <commit> src | tar -x -C /tmp/before``),
  and an A/A pair of it, which shows the noise;
* a Redis Cluster of 3 primaries: ``RedisBroker.enqueue`` wall time per message with and without
  the look-up in the queues of other slots (one round trip per node), 1 or 10 queues.

Batches of 100 messages and single messages; each figure is a mean (one server) or a median
(cluster) over ``--rounds`` blocks.

    .venv/bin/python bench/id_check_cost.py [--rounds 100] [--before /tmp/before/src]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from redis_servers import server, session_cluster

from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis.wire import packed_messages
from conveyor.ids import new_id
from conveyor.records import Message

HERE = Path(__file__).resolve().parents[1] / "src"
P = "idb"


def enqueue_source(root: Path) -> str:
    d = root / "conveyor" / "brokers" / "redis"
    parts = [d / "lib.lua", d / "messages.lua", d / "enqueue.lua"]
    return "\n".join(p.read_text() for p in parts if p.exists())


def messages(queue: str, n: int) -> list[Message]:
    return [Message(id=new_id(), task="t", queue=queue, priority=1, payload=b"[[1],{}]") for _ in range(n)]


def one_server(rounds: int, before: Path | None) -> None:
    variants: dict[str, tuple[Path, str, str | None]] = {
        "no look-up": (HERE, "qa", None),
        "1 queue": (HERE, "qb", f"{P}:queues1"),
        "10 queues": (HERE, "qc", f"{P}:queues10"),
    }
    if before is not None:
        variants["before"] = (before, "qd", None)
        variants["before (A/A)"] = (before, "qe", None)
    with server(Path(tempfile.mkdtemp())) as srv:
        r = srv.client()
        sha = {name: r.script_load(enqueue_source(root)) for name, (root, _, _) in variants.items()}
        r.sadd(f"{P}:queues1", "qb")
        r.sadd(f"{P}:queues10", "qc", *[f"o{n}" for n in range(9)])
        for n in range(9):
            r.hset(f"{P}:{{o{n}}}:jobs", new_id(), b"x")

        def cpu() -> float:
            info: Any = r.info("cpu")
            return float(info["used_cpu_user"] + info["used_cpu_sys"])

        for size, per in ((100, 2), (1, 20)):
            spent: dict[str, list[float]] = {v: [] for v in variants}
            names = list(variants)
            for k in range(rounds):
                for v in names[k % len(names) :] + names[: k % len(names)]:
                    _, q, registry = variants[v]
                    keys = [f"{P}:{{{q}}}:jobs", f"{P}:{{{q}}}:keys", f"{P}:{{{q}}}:counts"]
                    keys += [registry] if registry else []
                    calls = [packed_messages(messages(q, size)) for _ in range(per)]
                    start = cpu()
                    for args in calls:
                        r.evalsha(sha[v], len(keys), *keys, "", *args)
                    spent[v].append((cpu() - start) / (size * per) * 1e6)
            reference = statistics.mean(spent["before" if before else "no look-up"])
            for v, xs in spent.items():
                mean = statistics.mean(xs)
                print(f"one server, batch {size:3}, {v:13}: {mean:6.2f} us/msg, x{mean / reference:.2f}")
        r.close()


def on_cluster(rounds: int) -> None:
    port = session_cluster()[0].port
    for others in (0, 9):
        broker = RedisBroker(f"redis://127.0.0.1:{port}?cluster=1&prefix={P}-{os.urandom(3).hex()}", 60.0)
        for n in range(others):
            broker.enqueue(messages(f"o{n}", 1))
        look_up = broker._refuse_ids_held_elsewhere
        for size, per in ((100, 3), (1, 50)):
            timed: dict[bool, list[float]] = {True: [], False: []}
            for k in range(rounds):
                for on in (True, False) if k % 2 else (False, True):
                    broker._refuse_ids_held_elsewhere = look_up if on else (lambda batch: None)  # type: ignore[method-assign]
                    batches = [messages("q", size) for _ in range(per)]
                    start = time.perf_counter()
                    for batch in batches:
                        broker.enqueue(batch)
                    timed[on].append((time.perf_counter() - start) / (size * per) * 1e6)
            with_, without = statistics.median(timed[True]), statistics.median(timed[False])
            print(
                f"cluster, {others + 1:2} queues, batch {size:3}: without look-up {without:6.1f} us/msg,"
                f" with {with_:6.1f}, x{with_ / without:.2f}"
            )
        broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--before", type=Path, default=None, help="another source tree's src/")
    args = parser.parse_args()
    one_server(args.rounds, args.before)
    on_cluster(max(20, args.rounds // 2))


if __name__ == "__main__":
    main()
