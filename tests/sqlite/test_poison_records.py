"""One corrupt row of the SQLite store costs that row, never another job nor a sweep (issue 26,
finding 2): the store is a file that anything with write access may have damaged."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message

FAIR = Fairness([6, 3, 1])


@pytest.fixture
def store(tmp_path: Path) -> tuple[SQLiteBroker, sqlite3.Connection]:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/c.db")
    db = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    yield broker, db
    db.close()
    broker.close()


def _enqueue(broker: SQLiteBroker, n: int, queue: str = "q") -> list[str]:
    messages = [
        Message(id=new_id(), task="t", queue=queue, priority=1, payload=b"[[], {}]") for _ in range(n)
    ]
    broker.enqueue(messages)
    return [m.id for m in messages]


def test_a_task_name_that_is_not_text_costs_only_its_job(store) -> None:
    broker, db = store
    ids = _enqueue(broker, 8)
    db.execute("UPDATE conveyor_jobs SET task = CAST(X'FF80FE' AS TEXT) WHERE id = ?", (ids[3],))
    reserved = broker.reserve(["q"], 10, 30.0, "w", FAIR)
    assert sorted(d.id for d in reserved) == sorted(ids)
    assert {d.task for d in reserved if d.id != ids[3]} == {"t"}
    assert broker.get(ids[3]) is not None
    assert len(broker.jobs(queue="q")) == 8


def test_an_error_history_that_is_not_json_stops_no_sweep_and_no_page(store) -> None:
    broker, db = store
    ids = _enqueue(broker, 4)
    broker.reserve(["q"], 10, 0.01, "w", FAIR)
    db.execute("UPDATE conveyor_jobs SET errors = 'not json' WHERE id = ?", (ids[1],))
    db.execute("UPDATE conveyor_jobs SET errors = X'FF00' WHERE id = ?", (ids[2],))
    reclaimed = broker.reclaim(now=1e12)
    assert sorted(reclaimed.requeued) == sorted(ids)
    for job_id in ids:
        info = broker.get(job_id)
        assert info is not None and info.state == "ready"
        assert info.errors[-1]["type"] == "WorkerLost"
    assert broker.get(ids[1]).errors[0]["type"] == "CorruptRecord"
    assert len(broker.jobs(queue="q")) == 4


def test_a_worker_serves_the_rest_beside_a_corrupt_row(tmp_path: Path, run_worker) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/w.db")
    done: list[int] = []

    @app.task
    def work(n: int) -> None:
        done.append(n)

    jobs = [work.enqueue(n) for n in range(8)]
    db = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    db.execute("UPDATE conveyor_jobs SET task = CAST(X'FF80' AS TEXT) WHERE id = ?", (jobs[0].id,))
    db.close()
    with run_worker(app, concurrency=4):
        for job in jobs[1:]:
            job.result(timeout=10)
        deadline = time.monotonic() + 10
        while (info := app.broker.get(jobs[0].id)) is not None and info.state != "dead":
            assert time.monotonic() < deadline, "the corrupt job did not end dead"
            time.sleep(0.02)
    assert sorted(done) == list(range(1, 8))
    assert info is not None and info.state == "dead" and info.errors[-1]["type"] == "UnknownTask"
    app.close()


@pytest.mark.parametrize("priority", ["CAST(X'FF' AS TEXT)", "'x'", "X'00'", "2.5"])
def test_a_priority_that_is_not_a_level_stalls_no_reservation_and_no_wait(store, priority) -> None:
    """A priority stored as text that is not UTF-8 reads back as U+FFFD, which sorts below the
    stored byte: the probe for the level above found the same row forever (a reservation and a
    worker's wait that never returned, memory growing by the second). Found by
    tests/fuzz/test_stored_record_fuzz.py."""
    broker, db = store
    ids = _enqueue(broker, 3)
    db.execute(f"UPDATE conveyor_jobs SET priority = {priority} WHERE id = ?", (ids[0],))
    reserved = broker.reserve(["q"], 10, 30.0, "w", FAIR)
    assert {d.id for d in reserved} >= set(ids[1:])
    broker.wait(["q"], 0.0)
    assert len(broker.jobs(queue="q")) == 3
