"""The application benchmarks run: no-op tasks, sync and async."""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor()  # CONVEYOR_URL


@app.task(queue="bench")
def noop(n: int) -> None:
    """Does nothing: measures Conveyor's own cost per task."""


@app.task(queue="bench")
async def anoop(n: int) -> None:
    """Does nothing, natively async."""
