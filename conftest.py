"""Fixtures for the Python examples of the documentation (README.md and docs/*.md), which
pytest-markdown-docs runs as tests: each page runs in a fresh directory, on a fresh SQLite store
named by ``CONVEYOR_URL``, so ``Conveyor()`` in an example uses it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """The Markdown pages' Python blocks, through pytest-markdown-docs's collector. Its own
    ``--markdown-docs`` switch is left off: it would also import every .py file under the test
    paths to read their docstrings, helper modules included."""
    if file_path.suffix != ".md" or "node_modules" in file_path.parts:
        return None
    from pytest_markdown_docs.plugin import MarkdownTextFile

    collector: pytest.Collector = MarkdownTextFile.from_parent(parent, path=file_path)
    return collector


@pytest.fixture(autouse=True)
def _docs_example_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    if request.node.path.suffix != ".md":
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        patch.setenv("CONVEYOR_URL", f"sqlite:///{tmp_path}/docs.db")
        yield


@pytest.fixture
def URL() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL server, as a Conveyor URL, migrated as
    ``conveyor migrate URL`` does, dropped afterwards."""
    import os

    import psycopg

    base = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    schema = f"conveyor_docs_{os.urandom(5).hex()}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    from conveyor.brokers.postgres import migrate

    url = f"{base}?schema={schema}"
    migrate(url)
    yield url
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def DSN(URL: str) -> str:
    """A libpq connection string to the same database, with the examples' tables in URL's schema."""
    base, _, query = URL.partition("?")
    schema = query.removeprefix("schema=")
    return f"{base}?options=-csearch_path%3D{schema}"
