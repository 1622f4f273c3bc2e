"""enqueue(..., connection=): messages written in the caller's own transaction (SQL backends)."""

from __future__ import annotations

import time

import pytest

from conveyor.errors import KeyConflict

from .helpers import enqueue, make_message, reserve, total


class Abort(Exception):
    """Raised to roll the caller's transaction back."""


@pytest.fixture
def table(sql):
    sql("CREATE TABLE t (x INTEGER)")
    return lambda: [x for (x,) in sql("SELECT x FROM t ORDER BY x")]


def test_messages_exist_when_the_caller_commits(broker, t0, transaction, table):
    m = make_message()

    with transaction() as conn:
        conn.execute("INSERT INTO t (x) VALUES (1)")
        assert broker.enqueue([m], now=t0, connection=conn)[0].created

    assert table() == [1]
    assert [d.id for d in reserve(broker, now=t0)] == [m.id]


def test_messages_vanish_when_the_caller_rolls_back(broker, t0, transaction, table):
    m = make_message()

    with pytest.raises(Abort), transaction() as conn:
        conn.execute("INSERT INTO t (x) VALUES (1)")
        broker.enqueue([m], now=t0, connection=conn)
        raise Abort

    assert table() == []
    assert broker.get(m.id, now=t0) is None
    assert reserve(broker, now=t0) == []


def test_a_key_conflict_stores_nothing_of_the_batch_even_if_the_caller_commits(
    broker, t0, transaction, table
):
    enqueue(broker, t0, make_message(key="k", payload=b"[[1],{}]"))
    fresh = make_message()

    with transaction() as conn:
        with pytest.raises(KeyConflict):
            broker.enqueue([fresh, make_message(key="k", payload=b"[[2],{}]")], now=t0, connection=conn)
        conn.execute("INSERT INTO t (x) VALUES (1)")  # the caller carries on and commits its own work

    assert table() == [1]
    assert broker.get(fresh.id, now=t0) is None
    assert total(broker, "q", "ready", now=t0) == 1


def test_a_delay_runs_from_the_enqueue_not_from_the_start_of_the_callers_transaction(
    broker, transaction, table
):
    """PostgreSQL's now() is the start of the transaction: a delay counted from it would make a
    job enqueued late in a long transaction due early, or already due at its commit."""
    m = make_message(delay=1.0)

    with transaction() as conn:
        conn.execute("INSERT INTO t (x) VALUES (1)")  # the transaction has begun
        time.sleep(5.0)  # a long transaction (the scenario itself, not a wait for a condition)
        before = broker.time()
        assert broker.enqueue([m], connection=conn)[0].created

    job = broker.get(m.id)
    assert job is not None
    assert job.run_at >= before + 1.0
    assert job.enqueued_at >= before
    assert reserve(broker, now=before + 0.9) == []
