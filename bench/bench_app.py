"""The application benchmarks run: no-op tasks, sync and async."""

from __future__ import annotations

import time

from conveyor import Conveyor

app = Conveyor()  # CONVEYOR_URL


@app.task(queue="bench")
def noop(n: int) -> None:
    """Does nothing: measures Conveyor's own cost per task."""


@app.task(queue="bench")
async def anoop(n: int) -> None:
    """Does nothing, natively async."""


@app.task(queue="bench")
def work(seconds: float) -> None:
    """Busy for ``seconds``: the backlog that high-priority tasks must overtake."""
    time.sleep(seconds)
