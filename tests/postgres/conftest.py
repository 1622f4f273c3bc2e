"""PostgreSQL store tests: each test gets fresh schemas, dropped at teardown."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

BASE_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def admin() -> Iterator[Any]:
    """An autocommit connection to the test database, outside any broker."""
    with psycopg.connect(BASE_URL, autocommit=True) as conn:
        yield conn


@pytest.fixture
def new_store(admin: Any) -> Iterator[Callable[..., str]]:
    """``new_store(**params)``: the URL of a schema that does not exist yet (extra URL query
    parameters, e.g. ``application_name``, pass through); every one is dropped at teardown."""
    schemas: list[str] = []

    def make(**params: str) -> str:
        schema = f"conveyor_test_{os.urandom(5).hex()}"
        schemas.append(schema)
        query = "&".join([f"schema={schema}", *(f"{k}={v}" for k, v in params.items())])
        return f"{BASE_URL}?{query}"

    yield make
    for schema in schemas:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def store_url(new_store: Callable[..., str]) -> str:
    return new_store()
