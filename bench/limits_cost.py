"""Cost of limits on the store's hot path, in one process: enqueue N no-op jobs, then reserve
and acknowledge them in batches of 32, three ways: jobs without limits, jobs whose limits never
bind (a rate and a concurrency far above what the loop reaches), and jobs spread over 1,000
keys (one group each). Prints jobs/s of each phase, median of REPEAT runs.

    .venv/bin/python bench/limits_cost.py sqlite:////tmp/bench.db [N] [REPEAT]
    .venv/bin/python bench/limits_cost.py postgresql://127.0.0.1/test
"""

from __future__ import annotations

import statistics
import sys
import time

from conveyor.brokers import open_broker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome

try:
    from conveyor.records import Rule
except ImportError:  # a version without limits: only the "none" case runs
    Rule = None  # type: ignore[assignment,misc]


def _message(queue: str, rules: tuple[object, ...]) -> Message:
    base = {"id": new_id(), "task": "noop", "queue": queue, "priority": 1, "payload": b"[[],{}]"}
    return Message(**base, limits=rules) if rules else Message(**base)  # type: ignore[arg-type]


def run(url: str, case: str, n: int) -> tuple[float, float]:
    broker = open_broker(url)
    queue = f"bench-{case}-{new_id()[-6:]}"
    if case == "none":
        rules: list[tuple[object, ...]] = [()] * n
    elif case == "loose":
        loose = (Rule(key="task:noop", rate=1e6, burst=1000), Rule(key="acct:1", concurrency=100_000))
        rules = [loose] * n
    else:  # 1,000 keys, each far from its limits
        rules = [(Rule(key=f"acct:{i % 1000}", concurrency=1000),) for i in range(n)]
    t = time.perf_counter()
    for start in range(0, n, 500):
        broker.enqueue([_message(queue, rules[i]) for i in range(start, min(n, start + 500))])
    enqueue = n / (time.perf_counter() - t)
    done, fairness = 0, Fairness((6, 3, 1))
    t = time.perf_counter()
    while done < n:
        got = broker.reserve([queue], 32, 30.0, "bench", fairness)
        assert got, f"{case}: nothing claimable after {done} of {n}"
        broker.ack([Outcome(d.id, d.token, "succeeded", result=b"null") for d in got])
        done += len(got)
    cycle = n / (time.perf_counter() - t)
    broker.close()
    return enqueue, cycle


def main() -> None:
    url = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    cases = ["none"] if Rule is None else ["none", "loose", "keys"]
    for case in cases:
        runs = [run(url, case, n) for _ in range(repeat)]
        enq = statistics.median(r[0] for r in runs)
        cyc = statistics.median(r[1] for r in runs)
        print(f"{case:6} enqueue {enq:9.0f}/s   reserve+ack {cyc:9.0f}/s")


if __name__ == "__main__":
    main()
