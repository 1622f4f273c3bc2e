"""Prometheus metrics: store gauges on /metrics, and the counters and histograms a worker keeps."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from web_helpers import AUTH, Client, make_dead

from conveyor import Conveyor, RetryPolicy
from conveyor.priority import Fairness


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(name: str, **labels: str) -> float:
    """A sample of this process's default registry (0 when it does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def depth(queue: str, priority: str, state: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("conveyor_queue_depth", (("priority", priority), ("queue", queue), ("state", state)))


def test_store_gauges_per_queue_priority_and_state(app: Conveyor, serve, client: Client) -> None:
    @app.task(queue="emails")
    def send() -> None: ...

    for _ in range(3):
        send.enqueue()
    send.enqueue(priority="high")
    send.enqueue(priority="high")
    send.enqueue(priority="low", delay=3600)
    make_dead(app, "emails")  # takes the oldest of the most urgent level: a high one
    app.broker.reserve(["emails"], 1, 30.0, "w", Fairness(app.priorities.weights))  # running: high
    with serve(app) as url:
        r = client.get(url + "/metrics", headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    assert got[depth("emails", "normal", "ready")] == 3
    assert got[depth("emails", "high", "dead")] == 1
    assert got[depth("emails", "high", "running")] == 1
    assert got[depth("emails", "low", "scheduled")] == 1
    assert got[("conveyor_dead_letter_depth", (("queue", "emails"),))] == 1
    assert got[("conveyor_oldest_ready_age_seconds", (("queue", "emails"),))] >= 0
    assert got[("conveyor_workers", ())] == 0


def test_enqueue_counts_created_jobs_only(app: Conveyor) -> None:
    @app.task(queue="counted")
    def noop() -> None: ...

    before = value("conveyor_enqueued_total", queue="counted", priority="normal")
    app.enqueue_many([noop.message(), noop.message(key="k"), noop.message(priority="high")])
    noop.enqueue(key="k")  # an existing job: not counted
    assert value("conveyor_enqueued_total", queue="counted", priority="normal") == before + 2
    assert value("conveyor_enqueued_total", queue="counted", priority="high") >= 1


def test_worker_counters_and_histograms(app: Conveyor, run_worker) -> None:
    @app.task(queue="metered")
    def ok() -> None:
        time.sleep(0.01)

    @app.task(queue="metered", retry=RetryPolicy(max_attempts=2, base=0.01, max_delay=0.01))
    def bad() -> None:
        raise ValueError("no")

    def finished(task: str, outcome: str) -> float:
        return value("conveyor_finished_total", queue="metered", task=task, outcome=outcome)

    name_ok, name_bad = ok.name, bad.name
    before = {
        "started": value("conveyor_started_total", queue="metered", priority="normal", task=name_ok),
        "succeeded": finished(name_ok, "succeeded"),
        "retry": finished(name_bad, "retry"),
        "dead": finished(name_bad, "dead"),
        "delay": value("conveyor_start_delay_seconds_count", queue="metered", priority="normal"),
        "run": value("conveyor_run_seconds_count", queue="metered", task=name_ok),
        "beats": value("conveyor_worker_heartbeats_total"),
    }
    with run_worker(app, queues=["metered"], heartbeat=0.05) as worker:
        jobs = [ok.enqueue() for _ in range(5)]
        failing = bad.enqueue()
        for job in jobs:
            job.result(timeout=10)
        deadline = time.monotonic() + 10
        while failing.status() != "dead" or worker.counts["dead"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)  # heartbeats
        info = worker.info()
    assert (
        value("conveyor_started_total", queue="metered", priority="normal", task=name_ok)
        == before["started"] + 5
    )
    assert finished(name_ok, "succeeded") == before["succeeded"] + 5
    assert finished(name_bad, "retry") == before["retry"] + 1
    assert finished(name_bad, "dead") == before["dead"] + 1
    assert (
        value("conveyor_start_delay_seconds_count", queue="metered", priority="normal") == before["delay"] + 7
    )
    assert value("conveyor_run_seconds_count", queue="metered", task=name_ok) == before["run"] + 5
    assert value("conveyor_run_seconds_sum", queue="metered", task=name_ok) >= 0.05
    assert value("conveyor_run_seconds_bucket", queue="metered", task=name_ok, le="+Inf") >= 5
    assert value("conveyor_start_delay_seconds_bucket", queue="metered", priority="normal", le="0.001") >= 0
    assert value("conveyor_worker_heartbeats_total") > before["beats"]
    assert info.outcomes["metered"]["1"] == {"succeeded": 5, "retry": 1, "dead": 1}


def test_reclaimed_leases_are_counted(app: Conveyor, run_worker) -> None:
    @app.task(queue="reclaimed")
    def noop() -> None: ...

    noop.enqueue()
    before = value("conveyor_lease_reclaims_total", result="requeued")
    [lost] = app.broker.reserve(["reclaimed"], 1, 0.05, "a-crashed-worker", Fairness(app.priorities.weights))
    time.sleep(0.1)
    with run_worker(app, queues=["reclaimed"], lease=1.0, reclaim_interval=0.05):
        app.job(lost.id).result(timeout=10)
    assert value("conveyor_lease_reclaims_total", result="requeued") == before + 1
