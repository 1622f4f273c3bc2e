"""``conveyor bench``: throughput, priority latency, delay accuracy and cost on any store.

Every run uses a fresh queue name, so it needs no empty store and leaves earlier jobs alone. It
leaves nothing queued behind (the priority run's workers drain the rest of its backlog after the
measurement), and its finished jobs are kept ten minutes, not the default day: each run first
purges the finished jobs of earlier runs that are past that retention. Worker processes are real
(``python -m conveyor.worker.process conveyor.benchmark:app``). A latency run's tasks return the
moment they began to run, by the clock of the host running the bench and its workers: start delay
is that moment less the store's ``enqueued_at``, lateness that moment less the store's ``run_at``.
The store's ``started_at`` would be earlier: it is when a worker reserved the task, which may then
wait in the worker for a free slot. (A store on another host adds its clock's skew to both.)

Figures on a shared machine are noisy: compare ratios between runs of the same machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conveyor.app import Conveyor, Job
from conveyor.records import JobInfo

#: The benchmark's tasks; workers import this module with ``CONVEYOR_URL`` set by the runner.
#: A run finishes a million jobs: keep them long enough to read, not a day.
app = Conveyor(retention=600.0)


@app.task(queue="bench")
def noop(n: int) -> None:
    """Does nothing: Conveyor's own cost per task."""


@app.task(queue="bench")
def stamp(n: int) -> float:
    """Returns when it began to run: the start time of the latency runs."""
    return time.time()


@app.task(queue="bench")
async def anoop(n: int) -> None:
    """Does nothing, natively async."""


@dataclass
class Throughput:
    workers: int
    enqueue_one_by_one: float
    enqueue_batched: float
    drain: float
    end_to_end: float
    worker_cpu_us_per_task: float


@dataclass
class Latency:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    samples: int
    early: int = 0
    #: Low tasks finished per second while the urgent ones were measured (priority runs).
    backlog_drain: float | None = None


@dataclass
class Report:
    url: str
    task: str
    tasks: int
    throughput: list[Throughput] = field(default_factory=list)
    priority: Latency | None = None
    delay: Latency | None = None
    bytes_per_queued_task: float | None = None


def percentiles(values_ms: Sequence[float], early: int = 0) -> Latency:
    ordered = sorted(values_ms)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return Latency(statistics.median(ordered), at(0.95), at(0.99), ordered[-1], len(ordered), early)


class Bench:
    """One store, many runs; each run on its own queue. Earlier runs' jobs past their retention
    are purged first."""

    def __init__(self, url: str, concurrency: int = 32) -> None:
        self.url = url
        self.concurrency = concurrency
        os.environ["CONVEYOR_URL"] = url
        app.close()
        app.url = url
        while app.broker.expire() >= 1000:
            pass

    @contextmanager
    def workers(self, queue: str, count: int, concurrency: int | None = None) -> Iterator[list[int]]:
        """``count`` worker processes serving ``queue``; yields their pids, stops them after."""
        config = json.dumps({"queues": [queue], "concurrency": concurrency or self.concurrency})
        env = os.environ | {"CONVEYOR_URL": self.url, "CONVEYOR_LOG_LEVEL": "WARNING"}
        cmd = [sys.executable, "-m", "conveyor.worker.process", "conveyor.benchmark:app", config]
        procs = [subprocess.Popen(cmd, env=env) for _ in range(count)]
        try:
            yield [p.pid for p in procs]
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def _until(
        self, queue: str, state: str, count: int, timeout: float = 600, level: int | None = None
    ) -> None:
        """Wait until ``count`` jobs of ``queue`` (of one priority ``level``, if given) are in ``state``."""
        deadline = time.monotonic() + timeout
        while _count(queue, state, level) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue}: fewer than {count} {state} after {timeout} s")
            time.sleep(0.05)

    def _drained(
        self, queue: str, last: str, count: int, timeout: float = 600, level: int | None = None
    ) -> float:
        """When all ``count`` jobs of ``queue`` (of one priority ``level``, if given) have
        succeeded, ``last`` being the last enqueued.

        Counting a queue's jobs costs SQL stores a scan (100 ms at 150,000 rows), which polled
        often would take a core from the run it measures; so this polls the last job (a key
        lookup: jobs are claimed in enqueue order), and only then counts, untimed, to confirm."""
        deadline = time.monotonic() + timeout
        while (info := app.broker.get(last)) is None or info.state != "succeeded":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue}: job {last} not done after {timeout} s")
            time.sleep(0.001)
        done = time.perf_counter()
        if _count(queue, "succeeded", level) < count:  # a straggler: wait for it
            self._until(queue, "succeeded", count, timeout, level)
            done = time.perf_counter()
        return done

    @contextmanager
    def behind_backlog(self, backlog: int, workers: int = 2) -> Iterator[Backlog]:
        """Run the body while ``workers`` drain ``backlog`` low no-ops at full speed on a fresh
        queue (``Backlog.queue``), from their first success; the workers then drain the rest of the
        backlog, unmeasured, so nothing is left queued."""
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        for start in range(0, backlog, 1000):
            low = app.enqueue_many(
                noop.options(queue=queue, priority="low").message(i)
                for i in range(start, min(backlog, start + 1000))
            )
        with self.workers(queue, workers):
            self._until(queue, "succeeded", 1)
            yield Backlog(queue, backlog, _count(queue, "succeeded", None), time.perf_counter())
            self._drained(queue, low[-1].id, backlog, level=LOW)

    def _serving(self, queue: str, count: int, timeout: float = 60) -> float:
        """Wait until ``count`` workers serving ``queue`` have registered; return that moment."""
        deadline = time.monotonic() + timeout
        while sum(1 for w in app.broker.workers() if queue in w.queues) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue}: fewer than {count} workers up after {timeout} s")
            time.sleep(0.001)
        return time.perf_counter()

    def throughput(self, tasks: int, workers: int, task_name: str = "noop") -> Throughput:
        """Three runs of ``tasks`` no-ops:

        - enqueue: a tenth one by one, the rest in batches of 1000, with no worker running;
        - drain: that backlog, from the moment the first worker process is up (process start-up
          and imports are not the queue's cost) to the last success; worker CPU over the same span;
        - end to end: workers up and idle, then a producer enqueues in batches of 1000 while they
          run; from the first enqueue to the last success.
        """
        task = noop if task_name == "noop" else anoop
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        single = max(1, min(2000, tasks // 10))
        started = time.perf_counter()
        to_queue = task.options(queue=queue)
        for i in range(single):
            to_queue.enqueue(i)
        one_by_one = single / (time.perf_counter() - started)
        t0 = time.perf_counter()
        for start in range(single, tasks, 1000):
            jobs = app.enqueue_many(to_queue.message(i) for i in range(start, min(tasks, start + 1000)))
        batched = (tasks - single) / max(time.perf_counter() - t0, 1e-9)
        with self.workers(queue, workers) as pids:
            t0 = self._serving(queue, 1)
            cpu0 = sum(_cpu_seconds(pid) for pid in pids)
            drain = tasks / (self._drained(queue, jobs[-1].id, tasks) - t0)
            cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu0
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        with self.workers(queue, workers):
            t0 = self._serving(queue, workers)
            to_queue = task.options(queue=queue)
            for start in range(0, tasks, 1000):
                jobs = app.enqueue_many(to_queue.message(i) for i in range(start, min(tasks, start + 1000)))
            end_to_end = tasks / (self._drained(queue, jobs[-1].id, tasks) - t0)
        return Throughput(
            workers=workers,
            enqueue_one_by_one=one_by_one,
            enqueue_batched=batched,
            drain=drain,
            end_to_end=end_to_end,
            worker_cpu_us_per_task=cpu / tasks * 1e6,
        )

    def priority(self, backlog: int, samples: int, workers: int = 2) -> Latency:
        """Start delay of high-priority no-ops arriving every 20 ms while a low backlog of no-ops
        drains at full speed; also records how fast the backlog drained meanwhile. The workers then
        drain the rest of the backlog, unmeasured."""
        with self.behind_backlog(backlog, workers) as low:
            high = []
            for i in range(samples):
                high.append(stamp.options(queue=low.queue, priority="high").enqueue(i))
                time.sleep(0.02)
            rate = low.rate()
            delays = [1000 * (started - info.enqueued_at) for info, started in _started(high)]
        result = percentiles(delays)
        result.backlog_drain = rate
        return result

    def delay(self, samples: int, workers: int = 2) -> Latency:
        """Lateness of tasks due 1-3 s ahead while the workers idle; counts any started early."""
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        with self.workers(queue, workers):
            jobs = app.enqueue_many(
                stamp.options(queue=queue, delay=1.0 + 2.0 * i / samples).message(i) for i in range(samples)
            )
            lateness = [1000 * (started - info.run_at) for info, started in _started(jobs, timeout=60)]
        return percentiles(lateness, early=sum(1 for x in lateness if x < 0))

    def bytes_per_queued_task(self, tasks: int = 10_000) -> float | None:
        """Store growth per queued no-op task (Redis memory, database or file size)."""
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        measure = _store_size(self.url)
        if measure is None:
            return None
        before = measure()
        for start in range(0, tasks, 1000):
            app.enqueue_many(
                noop.options(queue=queue).message(i) for i in range(start, min(tasks, start + 1000))
            )
        grown = (measure() - before) / tasks
        with self.workers(queue, 2):
            self._until(queue, "succeeded", tasks)
        return grown


#: The backlog's priority level.
LOW = app.priorities.resolve("low")


@dataclass
class Backlog:
    """A low backlog draining behind a measurement (see ``Bench.behind_backlog``)."""

    queue: str
    size: int
    succeeded_before: int
    began: float

    def rate(self) -> float:
        """Jobs of the queue finished per second since the measurement began; warns if the
        backlog ran dry, which would leave the measurement with nothing to wait behind."""
        stats = app.broker.stats([self.queue])[0]
        if stats.total("ready") == 0:
            print(f"warning: the backlog ran dry during the measurement; raise --backlog above {self.size}")
        return (stats.total("succeeded") - self.succeeded_before) / (time.perf_counter() - self.began)


def _count(queue: str, state: str, level: int | None) -> int:
    """Jobs of ``queue`` in ``state``: of one priority level, or of all."""
    stats = app.broker.stats([queue])[0]
    return stats.total(state) if level is None else stats.counts.get(state, {}).get(level, 0)


def _started(jobs: list[Job[Any]], timeout: float = 600) -> list[tuple[JobInfo, float]]:
    """Each ``stamp`` job's record and the moment it began to run."""
    started = [float(job.result(timeout=timeout)) for job in jobs]
    return [(job.info(), at) for job, at in zip(jobs, started, strict=True)]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _store_size(url: str) -> Callable[[], float] | None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])

        def sqlite_size() -> float:
            """Pages in use (the WAL's included), not the file's size: freed pages are reused."""
            import sqlite3

            with contextlib.closing(sqlite3.connect(path)) as db:
                used = (
                    db.execute("PRAGMA page_count").fetchone()[0]
                    - db.execute("PRAGMA freelist_count").fetchone()[0]
                )
                return float(used * db.execute("PRAGMA page_size").fetchone()[0])

        return sqlite_size
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url.split("?", 1)[0])

        def redis_size() -> float:
            """Every benchmark queue's keys, counted exactly (MEMORY USAGE with SAMPLES 0)."""
            keys = client.scan_iter(match="*{bench-*", count=1000)
            return float(sum(client.memory_usage(key, samples=0) or 0 for key in keys))

        return redis_size
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        from conveyor.brokers.postgres.dsn import parse

        target = parse(url)

        def postgres_size() -> float:
            with psycopg.connect(target.conninfo, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
                    [target.schema],
                ).fetchone()
            return float(row[0] or 0) if row else 0.0

        return postgres_size
    return None


def run(
    url: str,
    tasks: int,
    workers: Sequence[int],
    task_name: str,
    backlog: int,
    samples: int,
    concurrency: int,
    report: Callable[[str], None],
) -> Report:
    """Every measurement on one store; ``report`` gets a line as each finishes."""
    bench = Bench(url, concurrency)
    result = Report(url=url, task=task_name, tasks=tasks)
    for w in workers:
        t = bench.throughput(tasks, w, task_name)
        result.throughput.append(t)
        report(
            f"{task_name} x{tasks}, {w} worker process(es): enqueue {t.enqueue_one_by_one:,.0f}/s one by one, "
            f"{t.enqueue_batched:,.0f}/s batched; drain {t.drain:,.0f}/s; end to end {t.end_to_end:,.0f}/s; "
            f"worker CPU {t.worker_cpu_us_per_task:,.0f} µs/task"
        )
    result.priority = bench.priority(backlog, samples)
    p = result.priority
    report(
        f"high-priority start delay behind a low backlog draining at {p.backlog_drain or 0:,.0f}/s: "
        f"p50 {p.p50_ms:.1f} ms, p95 {p.p95_ms:.1f} ms, p99 {p.p99_ms:.1f} ms, max {p.max_ms:.1f} ms"
    )
    result.delay = bench.delay(samples)
    d = result.delay
    report(
        f"delayed-task lateness: p50 {d.p50_ms:.1f} ms, p99 {d.p99_ms:.1f} ms, max {d.max_ms:.1f} ms, {d.early} early"
    )
    result.bytes_per_queued_task = bench.bytes_per_queued_task()
    if result.bytes_per_queued_task is not None:
        report(f"store growth per queued task: {result.bytes_per_queued_task:,.0f} bytes")
    app.close()
    return result


def to_json(report: Report) -> str:
    return json.dumps(asdict(report), indent=2)
