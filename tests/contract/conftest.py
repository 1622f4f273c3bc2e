"""Fixtures of the broker contract suite: every test runs once per backend in ``BACKENDS``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.brokers import Broker

from .backends import BACKENDS, Backend


def _capable(backend: Backend, fixtures: list[str]) -> bool:
    """Whether ``backend`` has what a test's fixtures need (SQL effects, caller transactions)."""
    if "sql" in fixtures and (not backend.sql_effects or backend.run_sql is None):
        return False
    return "transaction" not in fixtures or backend.transaction is not None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test once per backend that can run it: SQL-effect tests only on SQL stores."""
    if "backend" in metafunc.fixturenames:
        names = [n for n, b in BACKENDS.items() if _capable(b, metafunc.fixturenames)]
        metafunc.parametrize("backend", [BACKENDS[n] for n in names], ids=names)


@pytest.fixture
def store_url(backend: Backend, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh store, shared by every broker handle of one test."""
    url = backend.new_store(tmp_path)
    yield url
    if backend.drop_store is not None:
        backend.drop_store(url)


@pytest.fixture
def open_handle(backend: Backend, store_url: str) -> Iterator[Callable[[], Broker]]:
    """Open more broker handles on the test's store (as another process would); closed at teardown."""
    opened: list[Broker] = []

    def open_() -> Broker:
        opened.append(backend.open(store_url))
        return opened[-1]

    yield open_
    for handle in reversed(opened):
        handle.close()


@pytest.fixture
def broker(open_handle: Callable[[], Broker]) -> Broker:
    return open_handle()


@pytest.fixture
def t0() -> float:
    """The test's fixed "now"; time-dependent calls pass times relative to it."""
    return time.time()


@pytest.fixture
def sql(backend: Backend, store_url: str) -> Callable[..., list[tuple[object, ...]]]:
    """Run SQL on the store outside the broker (only SQL backends are given this fixture)."""
    run_sql = backend.run_sql
    assert run_sql is not None

    def run(statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        return run_sql(store_url, statement, params)

    return run


@pytest.fixture
def transaction(backend: Backend, store_url: str) -> Callable[[], contextlib.AbstractContextManager[object]]:
    """``with transaction() as conn:`` a caller's own transaction on the store (SQL backends)."""
    open_transaction = backend.transaction
    assert open_transaction is not None
    return lambda: open_transaction(store_url)
