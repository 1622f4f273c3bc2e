"""``sqlite:///:memory:``: the SQLite store in the memory of one process, for tests.

The broker contract runs against it in tests/contract (backend ``sqlite-memory``); these tests
cover what only it has: which handles share a database, how long it lives, and the refusal of
a second process.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.errors import ConfigurationError


def _tasks(app: Conveyor):
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    return add


def test_handles_with_the_same_name_share_one_database() -> None:
    name = f"t-{os.urandom(4).hex()}"
    first, second = Conveyor(f"sqlite:///:memory:?name={name}"), Conveyor(f"sqlite:///:memory:?name={name}")
    add = _tasks(first)
    job = add.enqueue(1, 2)
    assert second.broker.get(job.id) is not None
    first.close()
    second.close()


def test_each_unnamed_store_is_its_own_database() -> None:
    first, second = Conveyor("sqlite:///:memory:"), Conveyor("sqlite:///:memory:")
    job = _tasks(first).enqueue(1, 2)
    assert first.broker.get(job.id) is not None
    assert second.broker.get(job.id) is None
    first.close()
    second.close()


def test_the_database_is_gone_once_its_last_handle_closes() -> None:
    url = f"sqlite:///:memory:?name=t-{os.urandom(4).hex()}"
    app = Conveyor(url)
    job = _tasks(app).enqueue(1, 2)
    app.close()
    again = Conveyor(url)
    assert again.broker.get(job.id) is None
    again.close()


def test_threads_share_it_and_writes_wait_their_turn(run_worker) -> None:
    """A real worker (its threads each with a connection) runs jobs enqueued from this thread."""
    app = Conveyor("sqlite:///:memory:")
    add = _tasks(app)
    with run_worker(app, concurrency=4):
        jobs = [add.enqueue(i, i) for i in range(50)]
        assert [j.result(timeout=30) for j in jobs] == [2 * i for i in range(50)]
    app.close()


def test_a_caller_transaction_on_its_connection_commits_with_the_enqueue() -> None:
    app = Conveyor("sqlite:///:memory:")
    add = _tasks(app)
    broker = app.broker
    assert isinstance(broker, SQLiteBroker)
    conn = broker.connect()
    conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO orders VALUES (1)")
    job = add.enqueue(1, 2, connection=conn)
    conn.execute("ROLLBACK")
    assert broker.get(job.id) is None
    conn.execute("BEGIN IMMEDIATE")
    job = add.enqueue(1, 2, connection=conn)
    conn.execute("COMMIT")
    assert broker.get(job.id) is not None
    conn.close()
    app.close()


def _open_in_child(broker: SQLiteBroker, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        broker.stats()
        out.put("opened")
    except ConfigurationError as exc:
        out.put(str(exc))


def test_another_process_is_refused_not_given_an_empty_database() -> None:
    """A forked child sees the parent's broker object, but not its memory database: the store
    says so instead of answering from an empty copy."""
    broker = SQLiteBroker("sqlite:///:memory:")
    out: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()  # type: ignore[type-arg]
    child = multiprocessing.get_context("fork").Process(target=_open_in_child, args=(broker, out))
    child.start()
    child.join(30)
    assert "belongs to the process that opened it" in out.get(timeout=5)
    broker.close()


def test_no_file_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = Conveyor("sqlite:///:memory:")
    _tasks(app).enqueue(1, 2)
    app.close()
    assert list(tmp_path.iterdir()) == []
