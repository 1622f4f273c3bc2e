"""The ``conveyor`` command line against a real store and real workers."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
from harness import Cluster, wait_for

pytestmark = pytest.mark.slow


def test_enqueue_status_and_the_dead_letter_queue(sqlite_cluster: Cluster) -> None:
    out = sqlite_cluster.cli(
        "enqueue", "e2e_app:app", "fail", "--args", '["disk full"]', "--priority", "high"
    ).stdout
    failing = out.strip()
    first = sqlite_cluster.cli("enqueue", "e2e_app:app", "ok", "--key", "k1", "--delay", "0").stdout.strip()
    again = sqlite_cluster.cli("enqueue", "e2e_app:app", "ok", "--key", "k1").stdout
    assert again.startswith(first) and "existing" in again

    status = sqlite_cluster.cli("status", "e2e_app:app").stdout
    assert "default" in status and "high" in status and "normal" in status

    sqlite_cluster.supervisor("--processes", "1")
    wait_for(lambda: sqlite_cluster.app.job(failing).status() == "dead", what="the failing job to die")
    wait_for(lambda: sqlite_cluster.app.job(first).status() == "succeeded", what="ok to succeed")

    listed = sqlite_cluster.cli("dead", "list", sqlite_cluster.url, "--json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in listed] == [failing]
    assert "RuntimeError: disk full" in json.loads(listed[0])["error"]

    shown = sqlite_cluster.cli("dead", "show", "e2e_app:app", failing).stdout
    assert "attempt 1" in shown and "attempt 2" in shown and "raise RuntimeError(message)" in shown

    assert "replayed 1" in sqlite_cluster.cli("dead", "replay", "e2e_app:app", failing).stdout
    wait_for(lambda: sqlite_cluster.app.job(failing).status() == "dead", what="the replayed job to die again")
    assert len(sqlite_cluster.app.job(failing).info().errors) == 4  # history kept across the replay

    assert "purged 1" in sqlite_cluster.cli("dead", "purge", "e2e_app:app", "--all").stdout
    assert sqlite_cluster.cli("dead", "list", sqlite_cluster.url, "--json").stdout == ""
    assert "succeeded" in sqlite_cluster.cli("job", sqlite_cluster.url, first).stdout


def test_cli_reports_bad_input_clearly(sqlite_cluster: Cluster) -> None:
    unknown = sqlite_cluster.cli("enqueue", "e2e_app:app", "nope", check=False)
    assert unknown.returncode != 0 and "no task 'nope'" in unknown.stderr
    bad_priority = sqlite_cluster.cli("enqueue", "e2e_app:app", "ok", "--priority", "urgent", check=False)
    assert bad_priority.returncode != 0 and "invalid priority 'urgent'" in bad_priority.stderr
    bad_args = sqlite_cluster.cli("enqueue", "e2e_app:app", "fail", "--args", "[1, 2]", check=False)
    assert bad_args.returncode != 0 and "ArgumentError" in bad_args.stderr
    replay = sqlite_cluster.cli("dead", "replay", "e2e_app:app", check=False)
    assert replay.returncode != 0 and "give job ids or --all" in replay.stderr


def test_demo_runs_the_mixed_workload(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "demo", "--tasks", "400", "--db", str(tmp_path / "demo.db")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "summary" in out
    assert "0 early" in out
    assert "32 / 32 (of 32)" in out  # ledger rows = distinct orders = orders: exactly once
    assert "duplicate enqueues deduplicated" in out


def test_status_watch_refreshes_until_interrupted(sqlite_cluster: Cluster) -> None:
    """``status --watch`` redraws in a terminal: a job enqueued after it started shows up."""
    import os
    import pty
    import signal
    import subprocess
    import time

    primary, secondary = pty.openpty()
    env = {**sqlite_cluster.env, "COLUMNS": "200", "LINES": "40", "TERM": "xterm"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "status", "e2e_app:app", "--watch"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        close_fds=True,
    )
    os.close(secondary)
    seen = b""

    def read_until(needle: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while needle not in seen:
            assert time.monotonic() < deadline, f"never drew {needle!r}: {seen[-2000:]!r}"
            seen += os.read(primary, 65536)

    try:
        read_until(b"oldest ready")
        assert b" high " not in seen  # nothing enqueued yet
        sqlite_cluster.cli("enqueue", "e2e_app:app", "ok", "--priority", "high")
        read_until(b" high ")
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=30) == 0
    finally:
        watch.kill()
        os.close(primary)


def test_bench_measures_a_store_and_writes_json(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "bench.json"
    url = f"sqlite:///{tmp_path}/bench.db"
    # Enough tasks that the drain's worker CPU (counted in 10 ms clock ticks) is never 0.
    cmd = [sys.executable, "-m", "conveyor", "bench", url, "--tasks", "3000", "--workers", "1"]
    cmd += ["--backlog", "20000", "--samples", "10", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    [run] = report["throughput"]
    assert run["workers"] == 1 and run["drain"] > 0 and run["worker_cpu_us_per_task"] > 0
    assert (
        report["priority"]["samples"] == 10 and report["priority"]["p99_ms"] >= report["priority"]["p50_ms"]
    )
    assert report["delay"]["early"] == 0
    assert report["bytes_per_queued_task"] > 0
    assert "end to end" in proc.stdout and "lateness" in proc.stdout
    # Nothing is left queued on the measured store, and finished jobs are kept 10 minutes.
    with sqlite3.connect(tmp_path / "bench.db") as db:
        left = db.execute("SELECT count(*) FROM conveyor_jobs WHERE state != 'succeeded'").fetchone()[0]
        retention = db.execute("SELECT min(expires_at - finished_at) FROM conveyor_jobs").fetchone()[0]
    assert left == 0
    assert retention == pytest.approx(600, abs=1)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--backlog", "0"), ("--samples", "0"), ("--workers", "0"), ("--workers", "2,x")],
)
def test_bench_refuses_sizes_that_would_measure_nothing(tmp_path: Path, option: str, value: str) -> None:
    from click.testing import CliRunner

    from conveyor.cli import main

    url = f"sqlite:///{tmp_path}/bench.db"
    result = CliRunner().invoke(main, ["bench", url, option, value])
    # Refused before the store is opened: a backlog or sample count of 0 used to wait 10
    # minutes for a success that never came, no worker processes 60 s for a registration.
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert not (tmp_path / "bench.db").exists()
