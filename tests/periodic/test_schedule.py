"""Periodic schedules: tick arithmetic and planning with time as a parameter."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conveyor import ConfigurationError, Conveyor, current_job
from conveyor.context import JobContext, bind, unbind
from conveyor.ids import new_id
from conveyor.periodic import plan
from conveyor.records import Delivery


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


@pytest.fixture
def app(tmp_path: Path) -> Conveyor:
    return Conveyor(f"sqlite:///{tmp_path}/p.db")


def test_cron_ticks(app: Conveyor) -> None:
    @app.periodic(cron="*/5 * * * *")
    def sweep() -> None: ...

    s = app.schedules[0]
    assert s.next_after(ts(2026, 11, 28, 18, 3)) == ts(2026, 11, 28, 18, 5)
    assert s.next_after(ts(2026, 11, 28, 18, 5)) == ts(2026, 11, 28, 18, 10)  # strictly after
    assert s.latest_at_or_before(ts(2026, 11, 28, 18, 5)) == ts(2026, 11, 28, 18, 5)
    assert s.latest_at_or_before(ts(2026, 11, 28, 18, 9, 59)) == ts(2026, 11, 28, 18, 5)


def test_interval_ticks_are_aligned(app: Conveyor) -> None:
    @app.periodic(every=timedelta(minutes=10))
    def report() -> None: ...

    s = app.schedules[0]
    assert s.next_after(ts(2026, 1, 1, 0, 7)) == ts(2026, 1, 1, 0, 10)
    assert s.latest_at_or_before(ts(2026, 1, 1, 0, 7)) == ts(2026, 1, 1, 0, 0)


def test_plan_enqueues_the_next_tick_with_a_tick_key(app: Conveyor) -> None:
    @app.periodic(every=60, name="minutely")
    def minutely() -> None: ...

    now = ts(2026, 1, 1, 12, 0, 30)
    (message,) = plan(app.schedules, now, starting=True, retention=86400)
    assert message.run_at == ts(2026, 1, 1, 12, 1)
    assert message.key == f"periodic:minutely:{ts(2026, 1, 1, 12, 1):.3f}"
    again = plan(app.schedules, now + 5, starting=False, retention=86400)
    assert again[0].key == message.key and again[0].payload == message.payload  # dedupes


def test_catch_up_once_adds_the_latest_missed_tick_on_start_only(app: Conveyor) -> None:
    @app.periodic(cron="0 * * * *", catch_up="once")
    def hourly() -> None: ...

    now = ts(2026, 1, 1, 12, 20)
    starting = plan(app.schedules, now, starting=True, retention=86400)
    assert [m.run_at for m in starting] == [ts(2026, 1, 1, 12), ts(2026, 1, 1, 13)]
    assert [m.run_at for m in plan(app.schedules, now, starting=False, retention=86400)] == [
        ts(2026, 1, 1, 13)
    ]
    # Outside the retention window a tick's key is gone: it cannot be told apart, so it is skipped.
    assert len(plan(app.schedules, now, starting=True, retention=600)) == 1


def test_ticks_deduplicate_in_the_store(app: Conveyor) -> None:
    @app.periodic(every=60)
    def tick() -> None: ...

    now = ts(2030, 1, 1, 0, 0, 10)
    first = app.enqueue_many(plan(app.schedules, now, starting=False, retention=86400))
    second = app.enqueue_many(plan(app.schedules, now + 1, starting=False, retention=86400))
    assert first[0].created and not second[0].created and first[0].id == second[0].id


def test_invalid_schedules_are_refused(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError):

        @app.periodic(cron="not a cron")
        def bad() -> None: ...

    with pytest.raises(ConfigurationError):

        @app.periodic(cron="* * * * *", every=5)
        def both() -> None: ...

    with pytest.raises(ConfigurationError):

        @app.periodic(every=0)
        def zero() -> None: ...

    with pytest.raises(ConfigurationError):

        @app.periodic(every=1, tolerance=-1)
        def negative() -> None: ...

    assert app.tasks == {}


def test_a_tick_late_beyond_its_tolerance_is_missed(app: Conveyor) -> None:
    @app.periodic(every=10)
    def skip() -> None: ...

    @app.periodic(every=10, catch_up="once", name="once")
    def once() -> None: ...

    @app.periodic(every=86400, tolerance=2.0, name="daily")
    def daily() -> None: ...

    s, o, d = app.schedules
    tick = ts(2030, 1, 1)
    assert s.tolerance_at(tick) == 5.0 and d.tolerance_at(tick) == 2.0
    assert s.runs(tick, attempt=1, now=tick + 5.0)
    assert not s.runs(tick, attempt=1, now=tick + 5.5)
    assert s.runs(tick, attempt=2, now=tick + 500)  # it started once: it runs to its outcome
    # "once": a missed tick runs only while no later tick is due.
    assert o.runs(tick, attempt=1, now=tick + 9.9)
    assert not o.runs(tick, attempt=1, now=tick + 10.0)
    assert not d.runs(tick, attempt=1, now=tick + 2.5)


def test_the_default_tolerance_is_capped(app: Conveyor) -> None:
    @app.periodic(cron="0 3 * * *")
    def nightly() -> None: ...

    assert app.schedules[0].tolerance_at(ts(2030, 1, 1, 3)) == 60.0


def test_a_periodic_function_called_directly_runs(app: Conveyor) -> None:
    calls = []

    @app.periodic(every=1)
    def tick() -> None:
        calls.append(1)

    tick()
    assert calls == [1]
    assert tick.name.endswith("test_a_periodic_function_called_directly_runs.<locals>.tick")


def test_a_worker_drops_only_missed_ticks_not_runs_enqueued_by_hand(app: Conveyor) -> None:
    calls: list[str] = []

    @app.periodic(every=10, name="tick")
    def tick() -> None:
        calls.append(current_job().key or "by hand")

    def start(key: str | None, run_at: float, attempt: int = 1) -> None:
        delivery = Delivery(
            new_id(), "tick", "default", 1, b"[[],{}]", attempt, 5, attempt, run_at, run_at, key
        )
        token = bind(JobContext(delivery, "w"))
        try:
            tick.fn()
        finally:
            unbind(token)

    now = app.broker.time()
    late = math.floor(now / 10) * 10 - 10  # a tick at least 10 s ago: missed
    start(f"periodic:tick:{late:.3f}", late)
    start(f"periodic:tick:{late:.3f}", late, attempt=2)  # started once already: it runs
    start(None, late)  # the function enqueued by hand, late behind a backlog: it runs
    start(f"periodic:tick:{now + 1:.3f}", now + 1)  # on time

    assert calls == [f"periodic:tick:{late:.3f}", "by hand", f"periodic:tick:{now + 1:.3f}"]
