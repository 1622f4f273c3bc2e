"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import HERE, Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    sys.path.insert(0, str(HERE))
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()
        c.app.close()
        sys.path.remove(str(HERE))
