"""Conveyor's pytest fixtures, registered through the ``pytest11`` entry point (docs/testing.md).

``conveyor_isolated(app)`` points an application at a fresh in-memory store for one test;
``conveyor_drain`` is :func:`conveyor.testing.drain`. Disable with ``-p no:conveyor``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from conveyor.app import Conveyor
from conveyor.testing import Drained, drain, isolated


@pytest.fixture
def conveyor_isolated() -> Iterator[Callable[..., Conveyor]]:
    """``conveyor_isolated(app)`` (or ``(app, url)``): ``app`` uses a fresh store, by default
    ``sqlite:///:memory:``, until the test ends; then its own again."""
    with contextlib.ExitStack() as stack:

        def isolate(app: Conveyor, url: str | None = None) -> Conveyor:
            return stack.enter_context(isolated(app, url))

        yield isolate


@pytest.fixture
def conveyor_drain() -> Callable[..., Drained]:
    """:func:`conveyor.testing.drain`: ``conveyor_drain(app)`` runs the app's jobs until none is left."""
    return drain
