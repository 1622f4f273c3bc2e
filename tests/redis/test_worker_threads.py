"""A worker on a store that takes writes in parallel reserves on a thread of its own: a slow
acknowledgement (a big batch, a slow network) never holds back the next reservation."""

from __future__ import annotations

import threading
import time
from typing import Any

from conveyor import Conveyor


def test_reservations_go_on_while_an_ack_is_in_flight(store_url: str, run_worker, monkeypatch) -> None:
    app = Conveyor(store_url)
    runs: list[int] = []

    @app.task
    def tick(n: int) -> None:
        runs.append(n)

    broker = app.broker
    assert broker.parallel_writes
    real_ack = broker.ack
    held = threading.Event()
    release = threading.Event()

    def ack(outcomes: Any, *args: Any, **kwargs: Any) -> Any:
        held.set()
        release.wait(30)
        return real_ack(outcomes, *args, **kwargs)

    monkeypatch.setattr(broker, "ack", ack)
    app.enqueue_many(tick.message(n) for n in range(40))
    with run_worker(app, concurrency=4) as worker:
        try:
            deadline = time.monotonic() + 10
            while len(runs) < 40:
                assert time.monotonic() < deadline, f"{len(runs)} of 40 ran while an ack was held"
                time.sleep(0.005)
            assert held.is_set() and worker.counts["succeeded"] == 0  # all ran behind the held ack
        finally:
            release.set()
        while worker.counts["succeeded"] < 40:
            assert time.monotonic() < deadline + 10, "the held outcomes never landed"
            time.sleep(0.005)
    assert sorted(runs) == list(range(40))
    assert app.broker.stats(["default"])[0].total("succeeded") == 40
    app.close()
