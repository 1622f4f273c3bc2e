"""A transactional enqueue may be a fresh store's first use: it migrates the store first."""

from __future__ import annotations

import os

import pytest

from conveyor import Conveyor

psycopg = pytest.importorskip("psycopg")
BASE_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def test_the_first_use_of_a_store_can_be_an_enqueue_in_the_callers_transaction(store_url: str) -> None:
    """A web process that enqueues before any worker has started (examples/django found it):
    the caller's insert used to meet a schema that did not exist yet."""
    app = Conveyor(store_url)

    @app.task
    def ship(order: int) -> None: ...

    with psycopg.connect(BASE_URL) as conn:
        conn.execute("SELECT 1")  # the caller's transaction is open
        job = ship.enqueue(1, connection=conn)
    assert job.status() == "ready"
    app.close()
