"""enqueue(..., connection=conn): jobs written in the caller's own psycopg transaction."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from conveyor.brokers.postgres import PostgresBroker, migrate
from conveyor.brokers.postgres.dsn import parse
from conveyor.errors import ConfigurationError
from conveyor.ids import new_id
from conveyor.records import Message


def message(queue: str = "q") -> Message:
    return Message(id=new_id(), task="t", queue=queue, priority=1, payload=b"[[],{}]")


@pytest.fixture
def broker(store_url: str) -> Iterator[PostgresBroker]:
    migrate(store_url)
    handle = PostgresBroker(store_url)
    yield handle
    handle.close()


@pytest.fixture
def conninfo(store_url: str) -> str:
    return parse(store_url).conninfo


@pytest.fixture
def orders(admin: Any, store_url: str) -> str:
    """The user's own table, in the store's schema."""
    table = f'"{parse(store_url).schema}".orders'
    admin.execute(f"CREATE TABLE {table} (id text PRIMARY KEY)")
    return table


def test_the_job_exists_after_the_callers_commit(broker, conninfo, orders):
    m = message()
    with psycopg.connect(conninfo) as conn:  # not autocommit: the first statement begins
        conn.execute(f"INSERT INTO {orders} (id) VALUES ('o1')")
        assert broker.enqueue([m], connection=conn)[0].created
        assert broker.get(m.id) is None  # not committed: nobody else sees it yet
    # The with block committed.
    job = broker.get(m.id)
    assert job is not None
    assert job.state == "ready"


def test_the_job_vanishes_with_the_callers_rollback(broker, conninfo, orders, admin):
    m = message()
    with (
        psycopg.connect(conninfo, autocommit=True) as conn,
        pytest.raises(ZeroDivisionError),
        conn.transaction(),
    ):
        conn.execute(f"INSERT INTO {orders} (id) VALUES ('o1')")
        broker.enqueue([m], connection=conn)
        1 / 0  # noqa: B018 - the caller's code fails after the enqueue

    assert broker.get(m.id) is None
    assert admin.execute(f"SELECT count(*) FROM {orders}").fetchone() == (0,)
    assert broker.reserve(["q"], 10, 30, "w", _fairness()) == []


def test_waiting_workers_are_woken_at_commit_not_before(broker, conninfo):
    listening = threading.Event()
    returned: list[float] = []

    def wait() -> None:
        broker.wait(["q"], 0.01)  # this thread listens from now on
        listening.set()
        broker.wait(["q"], 5.0)
        returned.append(time.monotonic())

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert listening.wait(5)
    time.sleep(0.1)

    with psycopg.connect(conninfo) as conn:
        broker.enqueue([message()], connection=conn)
        time.sleep(0.5)
        assert returned == []  # the wake-up waits for the commit
        committed = time.monotonic()
    waiter.join(5)

    assert returned
    assert 0 <= returned[0] - committed < 0.5


def test_a_connection_with_another_row_factory_works(broker, conninfo):
    m = message()
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        assert broker.enqueue([m, message()], connection=conn)[0].id == m.id
    assert broker.get(m.id) is not None


def test_connections_that_cannot_hold_the_jobs_are_refused(broker, conninfo):
    no_transaction = psycopg.connect(conninfo, autocommit=True)
    with no_transaction as conn, pytest.raises(ConfigurationError):
        broker.enqueue([message()], connection=conn)
    with psycopg.connect(conninfo) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        with pytest.raises(ConfigurationError):  # a failed transaction
            broker.enqueue([message()], connection=conn)
    with pytest.raises(ConfigurationError):
        broker.enqueue([message()], connection=object())


def _fairness() -> Any:
    from conveyor.priority import Fairness

    return Fairness((6, 3, 1))
