"""Rates from successive samples of the worker registry; the overview's JSON."""

from __future__ import annotations

import time

from web_helpers import AUTH, Client

from conveyor import Conveyor
from conveyor.records import WorkerInfo
from conveyor.web.rates import Sample, Sampler, difference, quantile


def worker(wid: str, beat: float, succeeded: int, dead: int = 0, started_at: float = 0.0) -> WorkerInfo:
    counts = {"started": succeeded + dead, "succeeded": succeeded, "retry": 0, "dead": dead, "lost": 0}
    outcomes = {"q": {"1": {"succeeded": succeeded, "dead": dead}}}
    return WorkerInfo(wid, "host", 1, ["q"], 4, 0, started_at, beat, counts, outcomes)


def test_rates_per_minute_use_each_workers_heartbeat_times() -> None:
    old = Sample(100.0, {"a": worker("a", 95.0, 10), "b": worker("b", 99.0, 0)})
    new = Sample(130.0, {"a": worker("a", 125.0, 40, dead=3), "b": worker("b", 99.0, 0)})
    r = difference([old], new)
    assert r.succeeded == 60.0  # 30 in the 30 s between a's heartbeats; b did not beat again
    assert r.failed == 6.0
    assert r.by_level[("q", 1)] == {"succeeded": 60.0, "failed": 6.0}


def test_vanished_new_and_restarted_workers_count_for_nothing() -> None:
    old = Sample(0.0, {"gone": worker("gone", 0.0, 5), "again": worker("again", 0.0, 100, started_at=0.0)})
    new = Sample(60.0, {"new": worker("new", 60.0, 50), "again": worker("again", 60.0, 3, started_at=30.0)})
    r = difference([old], new)
    assert (r.succeeded, r.failed, r.by_level) == (0.0, 0.0, {})


def test_sampler_window_and_series() -> None:
    s = Sampler(keep=100.0, min_interval=1.0)
    assert s.rates() is None
    for t in range(0, 200, 10):
        s.observe(float(t), [worker("a", float(t), t)], [])
    s.observe(190.5, [worker("a", 190.0, 190)], [])  # too soon: ignored
    assert len(s.samples) == 11  # older than `keep` dropped
    assert s.rates(window=60.0).succeeded == 60.0
    series = s.series()
    assert len(series) == 10 and all(p["succeeded"] == 60.0 for p in series)


def test_quantile() -> None:
    assert quantile([], 0.5) is None
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([float(i) for i in range(1, 101)], 0.95) == 95.0


def test_overview_json_shows_rates_from_a_real_worker(
    app: Conveyor, run_worker, serve, client: Client
) -> None:
    @app.task
    def noop() -> None: ...

    with serve(app) as url, run_worker(app, heartbeat=0.05):
        first = client.get(url + "/api/overview", headers=AUTH).json()
        assert first["succeeded_per_min"] is None  # one sample so far
        for job in app.enqueue_many([noop.message() for _ in range(30)]):
            job.result(timeout=10)
        time.sleep(1.2)
        data = client.get(url + "/api/overview", headers=AUTH).json()
    assert data["workers"] == 1
    assert data["succeeded_per_min"] > 0
    [row] = data["rows"]
    assert row["queue"] == "default" and row["priority"] == "normal"
    assert row["succeeded_per_min"] > 0 and row["failed_per_min"] == 0
    assert data["delay"]["n"] == 30 and data["delay"]["p95"] >= data["delay"]["p50"] >= 0
    assert len(data["series"]) >= 1
