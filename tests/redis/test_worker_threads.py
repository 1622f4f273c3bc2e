"""A worker on a store that takes writes in parallel reserves on a thread of its own: a slow
acknowledgement (a big batch, a slow network) does not hold back the next reservation while the
worker has room, and room counts the leases whose outcomes are still on their way, so the tasks
a crash would run again stay bounded by the concurrency. Sweeps (reclaim, the retention purge)
run on a third thread, so one that reads far does not hold back the acks."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.brokers import Broker


def hold(
    monkeypatch: pytest.MonkeyPatch, broker: Broker, method: str
) -> tuple[threading.Event, threading.Event]:
    """Make every call of ``broker.<method>`` wait for the second event; the first is set when a
    call has begun."""
    real = getattr(broker, method)
    entered, release = threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(broker, method, held)
    return entered, release


def test_a_reservation_goes_ahead_while_an_ack_is_in_flight(store_url: str, run_worker, monkeypatch) -> None:
    app = Conveyor(store_url)
    ran: list[str] = []
    go = threading.Event()

    @app.task
    def quick(name: str) -> None:
        ran.append(name)

    @app.task
    def slow() -> None:
        go.wait(30)

    assert app.broker.parallel_writes
    acking, release = hold(monkeypatch, app.broker, "ack")
    app.enqueue_many([slow.message(), quick.message("first")])
    with run_worker(app, concurrency=3) as worker:
        try:
            deadline = time.monotonic() + 10
            while not acking.is_set():  # the first task's outcome is on its way, and held there
                assert time.monotonic() < deadline, "no ack was sent"
                time.sleep(0.005)
            assert len(worker.leases) == 2  # the slow task and the held outcome: room for one
            quick.enqueue("second")
            while "second" not in ran:
                assert time.monotonic() < deadline, "the reservation waited behind the held ack"
                time.sleep(0.005)
            assert worker.counts["succeeded"] == 0
            assert len(worker.leases) == 3  # full: nothing more is reserved until an ack lands
        finally:
            release.set()
            go.set()
        while worker.counts["succeeded"] < 3:
            assert time.monotonic() < deadline + 10, "the held outcomes never landed"
            time.sleep(0.005)
    assert sorted(ran) == ["first", "second"]
    assert app.broker.stats(["default"])[0].total("succeeded") == 3
    app.close()


def test_outcomes_on_their_way_count_against_the_room(store_url: str, run_worker, monkeypatch) -> None:
    """While acks are held, a worker runs at most ``concurrency`` tasks: the most a crash at that
    moment would make another worker run again."""
    app = Conveyor(store_url)
    ran: list[int] = []

    @app.task
    def tick(n: int) -> None:
        ran.append(n)

    _, release = hold(monkeypatch, app.broker, "ack")
    app.enqueue_many(tick.message(n) for n in range(40))
    with run_worker(app, concurrency=4) as worker:
        try:
            deadline = time.monotonic() + 10
            while len(ran) < 4 or worker.running:  # four ran, and their outcomes are held
                assert time.monotonic() < deadline, f"only {len(ran)} ran"
                time.sleep(0.005)
            # No room: counting only running tasks, the worker would now reserve four more.
            assert worker._room() == 0
            assert len(ran) == 4 and len(worker.leases) == 4
        finally:
            release.set()
        while worker.counts["succeeded"] < 40:
            assert time.monotonic() < deadline + 20, "the outcomes never landed"
            time.sleep(0.005)
    assert sorted(ran) == list(range(40))
    app.close()


@pytest.mark.parametrize("sweep", ["reclaim", "expire"])
def test_a_slow_sweep_does_not_hold_back_acks(store_url: str, run_worker, monkeypatch, sweep: str) -> None:
    """A reclaim probe on PostgreSQL can read a table's dead index entries from disk for tens of
    milliseconds; on the acks' thread that stalled every task behind it (the high-priority
    p99 went from 5 to 40 ms)."""
    app = Conveyor(store_url)
    ran: list[int] = []

    @app.task
    def tick(n: int) -> None:
        ran.append(n)

    sweeping, release = hold(monkeypatch, app.broker, sweep)
    with run_worker(app, concurrency=4, **{f"{sweep}_interval": 0.01}) as worker:
        try:
            deadline = time.monotonic() + 10
            while not sweeping.is_set():
                assert time.monotonic() < deadline, f"no {sweep} began"
                time.sleep(0.005)
            app.enqueue_many(tick.message(n) for n in range(40))
            while worker.counts["succeeded"] < 40:  # each ack lands while the sweep is held
                assert time.monotonic() < deadline, f"{worker.counts['succeeded']} of 40 acked"
                time.sleep(0.005)
        finally:
            release.set()
    assert sorted(ran) == list(range(40))
    app.close()
