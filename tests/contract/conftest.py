"""Fixtures of the broker contract suite: every test runs once per backend in ``BACKENDS``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.brokers import Broker

from .backends import BACKENDS, Backend


@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def store_url(backend: Backend, tmp_path: Path) -> str:
    """URL of a fresh store, shared by every broker handle of one test."""
    return backend.new_store(tmp_path)


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
    """Run SQL on the store outside the broker; skips backends without SQL effects."""
    if not backend.sql_effects or backend.run_sql is None:
        pytest.skip(f"{backend.name}: outcomes carry no SQL effects")
    run_sql = backend.run_sql

    def run(statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        return run_sql(store_url, statement, params)

    return run


@pytest.fixture
def transaction(backend: Backend, store_url: str) -> Callable[[], contextlib.AbstractContextManager[object]]:
    """``with transaction() as conn:`` a caller's own transaction on the store; skips backends
    without one."""
    if backend.transaction is None:
        pytest.skip(f"{backend.name}: no caller transactions for enqueue")
    open_transaction = backend.transaction
    return lambda: open_transaction(store_url)
