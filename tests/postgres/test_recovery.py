"""Broken connections: after the server ends the broker's sessions (as a restart does), the
operation that was cut off raises, and the broker reconnects for the next one.

Sessions are ended with pg_terminate_backend, restricted to the test's own application_name
so tests running against the same database are left alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conveyor import Conveyor
from conveyor.brokers.postgres import PostgresBroker, migrate
from conveyor.brokers.postgres.dsn import parse
from conveyor.errors import StoreUnavailable
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome

FAIRNESS = (6, 3, 1)


def message(queue: str = "q") -> Message:
    return Message(id=new_id(), task="t", queue=queue, priority=1, payload=b"[[],{}]")


@pytest.fixture
def app_name() -> str:
    return f"conveyor_recovery_{os.urandom(4).hex()}"


@pytest.fixture
def url(new_store, app_name: str) -> str:
    store = new_store(application_name=app_name)
    migrate(store)
    return store


@pytest.fixture
def broker(url: str) -> Iterator[PostgresBroker]:
    handle = PostgresBroker(url)
    yield handle
    handle.close()


def terminate(admin: Any, app_name: str) -> int:
    """End every session of the broker under test, wait until they are gone; return how many."""
    pids = [
        pid
        for (pid,) in admin.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = %s",
            [app_name],
        )
    ]
    admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
    deadline = time.monotonic() + 10
    alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
    while admin.execute(alive, [pids]).fetchone()[0]:
        assert time.monotonic() < deadline, "sessions still alive"
        time.sleep(0.01)
    return len(pids)


def test_operations_succeed_once_the_ended_sessions_are_gone(broker, admin, app_name):
    broker.enqueue([message() for _ in range(3)])
    threads = [threading.Thread(target=broker.stats) for _ in range(4)]  # a few pooled sessions
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert terminate(admin, app_name) >= 1

    # Idle pooled connections whose server side is gone are replaced before use: no error at all.
    (d,) = broker.reserve(["q"], 1, 30, "w", Fairness(FAIRNESS))
    assert broker.ack([Outcome(d.id, d.token, "succeeded")])[0].status == "ok"
    assert broker.enqueue([message()])[0].created
    assert broker.stats(["q"])[0].total("ready") == 3


def test_the_operation_cut_off_raises_and_the_next_one_succeeds(broker, admin, app_name, url):
    broker.enqueue([message()])
    (d,) = broker.reserve(["q"], 1, 30, "w", Fairness(FAIRNESS))
    schema = parse(url).schema
    failures: list[BaseException] = []

    def release() -> None:
        try:
            broker.release([(d.id, d.token)])
        except BaseException as exc:
            failures.append(exc)

    with psycopg.connect(parse(url).conninfo.replace(app_name, "blocker")) as blocker:
        blocker.execute(f'SELECT 1 FROM "{schema}".jobs WHERE id = %s FOR UPDATE', [d.id])
        thread = threading.Thread(target=release)
        thread.start()
        time.sleep(0.3)  # the release now waits for the row lock, on the server
        terminate(admin, app_name)
        thread.join(10)
        blocker.rollback()

    assert len(failures) == 1
    assert isinstance(failures[0], StoreUnavailable)
    assert broker.extend([(d.id, d.token)], 60) == []


def test_wait_reconnects_its_listening_connection(broker, admin, app_name):
    broker.wait(["q"], 0.01)  # this thread listens from now on
    terminate(admin, app_name)

    with pytest.raises(StoreUnavailable):  # the listening connection was ended
        broker.wait(["q"], 2.0)
    start = time.monotonic()
    broker.wait(["q"], 2.0)  # listens again, and returns at once: a wake-up may have been missed
    assert time.monotonic() - start < 0.5

    producer = threading.Timer(0.2, lambda: broker.enqueue([message()]))
    producer.start()
    start = time.monotonic()
    broker.wait(["q"], 5.0)
    producer.join()
    assert 0.15 < time.monotonic() - start < 1.0  # woken by the enqueue, not the timeout


def test_a_worker_carries_on_through_ended_sessions(url, admin, app_name, run_worker):
    app = Conveyor(url)
    done: list[int] = []

    @app.task
    def record(n: int) -> None:
        done.append(n)

    try:
        with run_worker(app, concurrency=4, lease=5.0, idle_wait=1.0):
            for n in range(20):
                record.enqueue(n)
            wait_for(lambda: len(done) >= 20)
            for _ in range(3):
                terminate(admin, app_name)
                time.sleep(0.2)
            for n in range(20, 40):
                record.enqueue(n)
            wait_for(lambda: len(set(done)) >= 40)
        assert sorted(set(done)) == list(range(40))
    finally:
        app.close()


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_extend_passes_a_lease_whose_row_is_locked_and_reports_it_held(broker, url, app_name):
    """An acknowledgement waiting on an effect's lock holds its job's row: heartbeats pass it
    (never wait for it), extend every other lease, and report it held."""
    broker.enqueue([message(), message()])
    locked, free = broker.reserve(["q"], 2, 30, "w", Fairness(FAIRNESS))
    schema = parse(url).schema
    with psycopg.connect(parse(url).conninfo.replace(app_name, "blocker")) as blocker:
        blocker.execute(f'SELECT 1 FROM "{schema}".jobs WHERE id = %s FOR UPDATE', [locked.id])
        start = time.monotonic()
        assert broker.extend([(locked.id, locked.token), (free.id, free.token)], 600) == []
        assert time.monotonic() - start < 5
        leases = dict(blocker.execute(f'SELECT id, lease_until FROM "{schema}".jobs').fetchall())
        blocker.rollback()
    assert leases[free.id] > leases[locked.id] + 500
