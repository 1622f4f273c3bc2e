"""The backends the contract suite runs against.

A backend joins the suite with one entry in ``BACKENDS``: how to make a fresh, isolated store
(returning the URL every broker handle and worker process opens) and which optional
capabilities it has. This module imports only the standard library and ``conveyor`` so worker
subprocesses of the race test can import it too.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.brokers import Broker, open_broker

#: Retention of finished jobs and their keys in every broker the suite opens.
RETENTION = 3600.0


@dataclass(frozen=True)
class Backend:
    name: str
    #: Create a fresh store isolated from every other test; return its URL.
    new_store: Callable[[Path], str]
    #: ``Outcome.effects`` are SQL statements committed with the ack (the transactional outbox).
    sql_effects: bool = False
    #: Run one SQL statement on the store outside the broker, returning its rows (SQL backends).
    run_sql: Callable[[str, str, Sequence[Any]], list[tuple[Any, ...]]] | None = None
    #: A connection to the store with a transaction open, for ``enqueue(..., connection=)``:
    #: commits when the block ends, rolls back if it raises (SQL backends).
    transaction: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None

    def open(self, url: str, retention: float = RETENTION) -> Broker:
        return open_broker(url, retention=retention)


def _sqlite_store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/c.db"


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _sqlite_sql(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(_sqlite_path(url), isolation_level=None, timeout=30)
    try:
        return db.execute(statement, params).fetchall()
    finally:
        db.close()


@contextlib.contextmanager
def _sqlite_transaction(url: str) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(_sqlite_path(url), isolation_level=None, timeout=30)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(
        "sqlite", _sqlite_store, sql_effects=True, run_sql=_sqlite_sql, transaction=_sqlite_transaction
    ),
    # "redis": Backend("redis", _redis_store),  # e.g. a fresh key prefix / database per test
    # "postgres": Backend("postgres", _pg_store, sql_effects=True, run_sql=..., transaction=...),
}
