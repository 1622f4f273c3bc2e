"""Due times are bounded when a message is made, within 100 years of now (``enqueue_many``
checks hand-built messages against the same bound), so no store holds an absurd one."""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.errors import ConfigurationError
from conveyor.validate import MAX_SECONDS

YEAR = 365.25 * 86400


@pytest.fixture
def noop(tmp_path: Any) -> Any:
    app = Conveyor(f"sqlite:///{tmp_path}/b.db")

    @app.task
    def noop() -> None: ...

    yield noop
    app.close()


def test_the_bound_is_a_hundred_years() -> None:
    assert pytest.approx(100 * YEAR) == MAX_SECONDS


@pytest.mark.parametrize("delay", [1e308, 101 * YEAR, 10**30, pytest.param(10**5000, id="5000-digit")])
def test_a_delay_beyond_a_hundred_years_is_refused(noop: Any, delay: float) -> None:
    with pytest.raises(ConfigurationError, match="delay"):
        noop.message(delay=delay)


@pytest.mark.parametrize(
    "run_at",
    [
        -1e18,
        1e308,
        time.time() + 101 * YEAR,
        time.time() - 101 * YEAR,
        -(10**30),
        pytest.param(10**5000, id="5000-digit"),
    ],
)
def test_a_run_at_beyond_a_hundred_years_from_now_is_refused(noop: Any, run_at: float) -> None:
    with pytest.raises(ConfigurationError, match="run_at"):
        noop.message(run_at=run_at)


def test_aware_datetimes_are_bounded_too(noop: Any) -> None:
    with pytest.raises(ConfigurationError, match="run_at"):
        noop.message(run_at=dt.datetime(9999, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(ConfigurationError, match="run_at"):
        noop.message(run_at=dt.datetime(1, 1, 1, tzinfo=dt.UTC))


def test_times_within_the_bound_are_kept(noop: Any) -> None:
    assert noop.message(delay=99 * YEAR).delay == 99 * YEAR
    soon = time.time() + 99 * YEAR
    assert noop.message(run_at=soon).run_at == soon
    assert noop.message(run_at=0).run_at == 0.0  # 1970: long past, due now
    assert not math.isinf(noop.message(run_at=time.time() - 99 * YEAR).run_at)


def test_enqueue_refuses_before_anything_is_stored(noop: Any) -> None:
    with pytest.raises(ConfigurationError):
        noop.enqueue(delay=1e308)
    assert noop.app.broker.stats() == [] or all(
        sum(sum(per.values()) for per in qs.counts.values()) == 0 for qs in noop.app.broker.stats()
    )
