"""What pausing a task costs the other tasks of its queue when a large backlog of it is queued.

Straight through the broker (no worker), on a fresh store: ``--paused`` jobs of task A queued,
then ``--others`` jobs of task B (due after all of A), in one queue. Then:
- baseline: a reservation of ``--limit`` with nothing paused (A's jobs are at the head), then
  released again (the fastest of 5);
- pause A; reservations of ``--limit`` one after another until B's jobs are all claimed: how many
  calls, the total time, the slowest call (each parks at most PARK_BUDGET of A's jobs);
- steady: B jobs enqueued again, reservations once A's backlog is parked (the cost of every
  later claim while A stays paused; the fastest of 5);
- resume A: the time of the one operation that puts A's parked jobs back.

    .venv/bin/python bench/pause_backlog.py --url URL [--paused 50000] [--others 10] [--limit 10]

URL: a fresh store (a new SQLite file, PostgreSQL schema or Redis prefix); it is left behind.

Figures on a shared machine are noisy: compare runs made one after the other.
"""

from __future__ import annotations

import argparse
import time

from conveyor.brokers import open_broker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message

WEIGHTS = (6, 3, 1)


def _messages(task: str, n: int, due: float) -> list[Message]:
    return [
        Message(id=new_id(), task=task, queue="q", priority=1, payload=b"[[],{}]", run_at=due)
        for _ in range(n)
    ]


def run(url: str, paused: int, others: int, limit: int) -> dict[str, float]:
    broker = open_broker(url)
    try:
        t0 = broker.time() - 3600
        for start in range(0, paused, 1000):
            broker.enqueue(_messages("A", min(1000, paused - start), t0))
        broker.enqueue(_messages("B", others, t0 + 1))

        def reserve() -> list[str]:
            return [d.task for d in broker.reserve(["q"], limit, 60.0, "bench", Fairness(WEIGHTS))]

        baseline = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            got = broker.reserve(["q"], limit, 60.0, "bench", Fairness(WEIGHTS))
            baseline = min(baseline, time.perf_counter() - began)
            broker.release([(d.id, d.token) for d in got])

        broker.pause("q", task="A")
        calls, slowest, claimed = 0, 0.0, 0
        began = time.perf_counter()
        while claimed < others:
            one = time.perf_counter()
            tasks = reserve()
            slowest = max(slowest, time.perf_counter() - one)
            calls += 1
            assert "A" not in tasks, tasks
            claimed += tasks.count("B")
        through = time.perf_counter() - began

        broker.enqueue(_messages("B", 5 * limit, t0 + 2))
        steady = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            steady_got = reserve()
            steady = min(steady, time.perf_counter() - began)
            assert steady_got == ["B"] * limit, steady_got

        began = time.perf_counter()
        broker.resume("q", task="A")
        resume = time.perf_counter() - began
        (qs,) = broker.stats(["q"])
        assert qs.total("ready") == paused, qs
        return {
            "baseline_ms": baseline * 1000,
            "calls": calls,
            "through_ms": through * 1000,
            "slowest_ms": slowest * 1000,
            "steady_ms": steady * 1000,
            "resume_ms": resume * 1000,
        }
    finally:
        broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--paused", type=int, default=50_000)
    parser.add_argument("--others", type=int, default=10)
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args()
    r = run(args.url, args.paused, args.others, args.limit)
    print(
        f"{args.url.split('://', maxsplit=1)[0]}: {args.paused} paused A ahead of {args.others} B, limit {args.limit}:"
        f" reserve unpaused {r['baseline_ms']:.1f} ms; paused: B all claimed after {r['calls']:.0f} calls,"
        f" {r['through_ms']:.0f} ms (slowest call {r['slowest_ms']:.1f} ms); then a reserve"
        f" {r['steady_ms']:.1f} ms; resume {r['resume_ms']:.0f} ms"
    )


if __name__ == "__main__":
    main()
