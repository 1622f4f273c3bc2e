"""``conveyor demo``: a realistic mixed workload on the embedded SQLite store.

A low-priority backlog of reports, normal image work, high-priority e-mails arriving while the
backlog drains, delayed reminders, flaky tasks that succeed on their third attempt, tasks that
always fail and end in the dead letter queue, and payments enqueued twice under one idempotency
key whose ledger rows commit with their acknowledgement.
"""

from __future__ import annotations

import asyncio
import os
import random
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from conveyor.app import Conveyor, Job
from conveyor.context import current_job
from conveyor.records import JobInfo, Message
from conveyor.retry import RetryPolicy

app = Conveyor()
QUICK_RETRY = RetryPolicy(max_attempts=4, base=0.05, max_delay=0.5)


@app.task(queue="demo", priority="low")
def generate_report(n: int) -> int:
    """A slow, unimportant job: the backlog."""
    time.sleep(0.004)
    return n


@app.task(queue="demo")
def resize_image(n: int) -> str:
    """Ordinary work."""
    time.sleep(0.002)
    return f"image-{n}.webp"


@app.task(queue="demo", priority="high")
def send_email(to: str) -> None:
    """Urgent and short: must not wait behind the backlog."""
    time.sleep(0.001)


@app.task(queue="demo", priority="high")
def remind(n: int) -> None:
    """Delayed: due one to three seconds after it is enqueued."""


@app.task(queue="demo", retry=QUICK_RETRY)
def flaky_upload(n: int) -> None:
    """Fails twice, then succeeds."""
    if current_job().attempt < 3:
        raise ConnectionError(f"upload {n}: remote closed the connection")


@app.task(queue="demo", retry=RetryPolicy(max_attempts=3, base=0.05, max_delay=0.2))
def parse_feed(n: int) -> None:
    """Always fails: ends in the dead letter queue with three recorded errors."""
    raise ValueError(f"feed {n}: unexpected token at line 1")


@app.task(queue="demo")
async def charge(order: int, cents: int) -> None:
    """An async task whose ledger row commits atomically with its acknowledgement."""
    await asyncio.sleep(0.001)
    current_job().execute("INSERT INTO demo_ledger (order_id, cents) VALUES (?, ?)", (order, cents))


def _workload(total: int, rng: random.Random) -> tuple[list[Message], list[Message], int]:
    """Messages to enqueue up front, high-priority messages to trickle in, and duplicate count."""
    upfront: list[Message] = [generate_report.message(i) for i in range(int(total * 0.30))]
    upfront += [resize_image.message(i) for i in range(int(total * 0.30))]
    upfront += [remind.options(delay=rng.uniform(1.0, 3.0)).message(i) for i in range(int(total * 0.05))]
    upfront += [flaky_upload.message(i) for i in range(int(total * 0.05))]
    upfront += [parse_feed.message(i) for i in range(int(total * 0.02))]
    orders = int(total * 0.08)
    for i in range(orders):  # each payment is submitted twice: a double click
        upfront += [charge.options(key=f"order-{i}").message(i, 100 + i)] * 2
    rng.shuffle(upfront)
    upfront.sort(key=lambda m: m.task != generate_report.name)  # the backlog goes in first
    trickle = [send_email.message(f"user{i}@example.com") for i in range(int(total * 0.12))]
    return upfront, trickle, orders


def run_demo(total: int, processes: int, db: str, console: Console) -> None:
    """Run the workload with real worker processes and print the summary."""
    path = Path(db).resolve()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    os.environ["CONVEYOR_URL"] = url
    app.url = url
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE demo_ledger (order_id INTEGER, cents INTEGER)")
    app.broker  # noqa: B018 - creates the schema before the workers start

    console.print(f"[bold]Conveyor demo[/]: {total} tasks, {processes} worker processes, store {url}")
    rng = random.Random(42)
    upfront, trickle, orders = _workload(total, rng)
    cmd = [
        sys.executable,
        "-m",
        "conveyor",
        "worker",
        "conveyor.demo:app",
        "--queues",
        "demo",
        "--processes",
        str(processes),
        "--concurrency",
        "8",
        "--log-level",
        "ERROR",  # the deliberate failures (retries, dead letters) are summarised at the end
    ]
    workers = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    # Worker logs go through the console, above the progress bar, instead of scrolling over it.
    relay = threading.Thread(target=_relay, args=(workers, console), daemon=True)
    relay.start()
    try:
        started = time.monotonic()
        jobs: list[Job[Any]] = []
        for i in range(0, len(upfront), 500):
            jobs += app.enqueue_many(upfront[i : i + 500])

        high_jobs: list[Job[Any]] = []

        def produce_high() -> None:
            for message in trickle:
                high_jobs.extend(app.enqueue_many([message]))
                time.sleep(0.004)

        while app.broker.stats(["demo"])[0].total("succeeded") == 0:  # workers are up
            time.sleep(0.01)
        producer = threading.Thread(target=produce_high)
        producer.start()
        expected = len({j.id for j in jobs}) + len(trickle)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("finished", total=expected)
            detail = progress.add_task("retrying / dead", total=None)
            while True:
                stats = app.broker.stats(["demo"])[0]
                done = stats.total("succeeded") + stats.total("dead")
                progress.update(bar, completed=done)
                progress.update(
                    detail, description=f"scheduled {stats.total('scheduled')} / dead {stats.total('dead')}"
                )
                if done >= expected and not producer.is_alive():
                    break
                time.sleep(0.2)
        wall = time.monotonic() - started
        producer.join()
    finally:  # the workers stop with the demo, also when it fails or is interrupted
        workers.send_signal(signal.SIGTERM)
        workers.wait(60)
        relay.join(5)
    _summary(console, [*jobs, *high_jobs], orders, path, wall)


def _relay(workers: subprocess.Popen[str], console: Console) -> None:
    """Print each line the workers log through ``console`` (above a live progress bar)."""
    assert workers.stderr is not None
    for line in workers.stderr:
        console.print(Text(line.rstrip("\n"), style="dim"), highlight=False)


def conveyor_command() -> str:
    """How to run ``conveyor`` from where the demo runs: the script beside this Python (in a
    virtualenv's bin, which the shell may not have on its PATH), relative to the current
    directory when inside it; else ``python -m conveyor``."""
    script = Path(sys.executable).with_name("conveyor")
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m conveyor"
    found = shutil.which("conveyor")
    if found is not None and Path(found).resolve() == script.resolve():
        return "conveyor"
    try:
        shown = str(script.absolute().relative_to(Path.cwd()))
    except ValueError:
        shown = str(script.absolute())
    return shlex.quote(shown)


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f} ms"


def _summary(console: Console, jobs: list[Job[Any]], orders: int, path: Path, wall: float) -> None:
    unique = {j.id: j for j in jobs}
    infos: list[JobInfo] = [i for i in (app.broker.get(job_id) for job_id in unique) if i is not None]
    succeeded = [i for i in infos if i.state == "succeeded"]
    dead = [i for i in infos if i.state == "dead"]
    with sqlite3.connect(path) as conn:
        ledger, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT order_id) FROM demo_ledger"
        ).fetchone()
    table = Table(title="Conveyor demo: summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("tasks processed (succeeded)", str(len(succeeded)))
    table.add_row("tasks that needed retries", str(sum(1 for i in succeeded if i.attempt > 1)))
    table.add_row("failed attempts recorded", str(sum(len(i.errors) for i in infos)))
    table.add_row("dead (in the dead letter queue)", str(len(dead)))
    table.add_row("duplicate enqueues deduplicated", str(sum(1 for j in jobs if not j.created)))
    table.add_row("payment ledger rows / distinct orders", f"{ledger} / {distinct} (of {orders})")
    table.add_row("wall time", f"{wall:.2f} s")
    table.add_row("throughput", f"{len(infos) / wall:,.0f} tasks/s")
    console.print(table)

    delays = Table(title="start delay (reserved by a worker - due), first attempts")
    for col in ("priority", "tasks", "p50", "p99", "max"):
        delays.add_column(col, justify="right" if col != "priority" else "left")
    for level, name in enumerate(app.priorities.names):
        values = [
            i.started_at - i.run_at
            for i in succeeded
            if i.priority == level and i.attempt == 1 and i.started_at is not None
        ]
        delays.add_row(
            name,
            str(len(values)),
            _pct(values, 0.5),
            _pct(values, 0.99),
            f"{max(values) * 1000:.1f} ms" if values else "-",
        )
    console.print(delays)
    reminders = [i for i in succeeded if i.task == remind.name and i.started_at is not None]
    early = sum(1 for i in reminders if i.started_at is not None and i.started_at < i.run_at)
    lateness = [i.started_at - i.run_at for i in reminders if i.started_at is not None]
    console.print(
        f"delayed tasks: {len(reminders)} ran, {early} early, lateness to their reservation"
        f" p50 {_pct(lateness, 0.5)},"
        f" p99 {_pct(lateness, 0.99)}"
    )
    if dead:
        command = f"{conveyor_command()} dead list {shlex.quote(f'sqlite:///{path}')}"
        console.print(Text(f"inspect the dead letter queue: {command}"), highlight=False, soft_wrap=True)
