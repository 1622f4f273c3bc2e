"""The application the worker-process tests run (``web_app:app``); its store is $CONVEYOR_URL."""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor()


@app.task
def work(n: int) -> int:
    """Return ``n``."""
    return n
