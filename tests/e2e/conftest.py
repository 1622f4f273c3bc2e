"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster, cluster_of
from stores import STORES, SQLiteStore


@pytest.fixture(params=list(STORES))
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """Worker processes against a fresh store of each backend."""
    yield from cluster_of(STORES[request.param](tmp_path), tmp_path)


@pytest.fixture
def sqlite_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Worker processes against a fresh SQLite store (for what does not depend on the backend)."""
    yield from cluster_of(SQLiteStore(tmp_path), tmp_path)


@pytest.fixture
def postgres_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Worker processes against a fresh schema on the PostgreSQL server."""
    yield from cluster_of(STORES["postgres"](tmp_path), tmp_path)
