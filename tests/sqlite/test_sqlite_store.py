"""What only the SQLite backend promises: its indexes, its file settings, its URL."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from conveyor import ConfigurationError, Conveyor
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.brokers.sqlite_limits import CLAIM_PLAIN
from conveyor.priority import Fairness


def test_claim_uses_the_pending_index_with_many_finished_jobs(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/big.db")
    db = sqlite3.connect(tmp_path / "big.db")
    finished = ((f"f{i}", "succeeded", 1e12) for i in range(200_000))
    db.executemany(
        "INSERT INTO conveyor_jobs (id, task, queue, priority, state, payload, run_at, enqueued_at,"
        " max_attempts, finished_at, expires_at) VALUES (?, 't', 'q', 1, ?, x'00', 0, 0, 1, 1, ?)",
        finished,
    )
    db.commit()
    db.execute("ANALYZE")
    plan = " ".join(
        str(row[-1])
        for row in db.execute(
            "EXPLAIN QUERY PLAN " + CLAIM_PLAIN,
            {
                "now": time.time(),
                "lease": 30,
                "worker": "w",
                "queue": "q",
                "priority": 1,
                "limit": 10,
                "held": None,
            },
        )
    )
    assert "conveyor_jobs_pending" in plan, plan
    assert "SCAN conveyor_jobs" not in plan.replace("SCAN conveyor_jobs USING", ""), plan
    db.close()
    assert broker.reserve(["q"], 10, 30, "w", Fairness([6, 3, 1])) == []
    broker.close()


def test_the_store_is_in_wal_mode(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/wal.db?synchronous=full")
    db = broker._db()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    broker.close()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite://host/x.db",
        "sqlite:///x.db?cache=shared",
        "sqlite:///x.db?name=a",
        "sqlite:///:memory:?name=a/b",
    ],
)
def test_invalid_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteBroker(url)


def test_workers_purge_finished_jobs_after_the_retention(tmp_path: Path, run_worker) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/retention.db", retention=0.1)

    @app.task
    def quick() -> None: ...

    with run_worker(app, expire_interval=0.05):
        job = quick.enqueue()
        job.result(timeout=10)
        deadline = time.monotonic() + 10
        while app.broker.get(job.id) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
    assert app.broker.get(job.id) is None
    app.close()


def test_a_forked_child_gets_its_own_connection_and_wake_up_socket(tmp_path: Path) -> None:
    import os

    broker = SQLiteBroker(f"sqlite:///{tmp_path}/fork.db")
    broker.wait(["q"], timeout=0.01)
    parent_socket = broker._listener_name
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must register a socket of its own, and be able to use the store
        try:
            broker.wait(["q"], timeout=0.01)
            ok = broker._listener_name != parent_socket and broker.stats() == []
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    broker.close()
