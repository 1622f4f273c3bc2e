"""Fresh stores of every backend for tests that run a real worker in the test process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from contract.backends import BACKENDS
from conveyor import Conveyor

#: The backends worker tests run on (redis-acl adds nothing to what a worker does).
NAMES = ["sqlite", "postgres", "redis"]


@contextlib.contextmanager
def fresh_app(name: str, tmp_path: Path, url: str | None = None, **options: object) -> Iterator[Conveyor]:
    """An application on a fresh store of backend ``name`` (or on ``url``), closed and removed
    at the end."""
    backend = BACKENDS[name]
    store = url or backend.new_store(tmp_path)
    app = Conveyor(store, **options)  # type: ignore[arg-type]
    try:
        yield app
    finally:
        app.close()
        if backend.drop_store is not None:
            with contextlib.suppress(Exception):
                backend.drop_store(store)
