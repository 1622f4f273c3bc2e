"""``conveyor worker --metrics-port``: the supervisor serves the merged metrics of its processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).parent
TOKEN = "metrics-token-7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def succeeded(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "conveyor_finished_total" and s.labels.get("outcome") == "succeeded"
    )


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_supervisor_merges_its_processes_and_requires_the_token(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    port = free_port()
    env = os.environ | {
        "CONVEYOR_URL": url,
        "PYTHONPATH": str(HERE),
        "CONVEYOR_METRICS_TOKEN": TOKEN,
        "CONVEYOR_DASHBOARD_TOKEN": "",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, "-m", "conveyor", "worker", "web_app:app", "--processes", "2", "--lease", "2"]
    cmd += ["--metrics-port", str(port), "--log-level", "WARNING"]
    log = (tmp_path / "supervisor.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    from web_app import app, work

    app.close()
    app.url = url
    metrics = f"http://127.0.0.1:{port}/metrics"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        wait_for(lambda: len(app.broker.workers()) == 2)
        jobs = app.enqueue_many([work.message(i) for i in range(40)])
        for job in jobs:
            job.result(timeout=30)
        assert httpx.get(metrics, timeout=10).status_code == 401
        assert httpx.get(metrics, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        r = httpx.get(metrics, headers=auth, timeout=10)
        assert r.status_code == 200
        assert succeeded(r.text) == 40
        assert "conveyor_start_delay_seconds_bucket" in r.text
        assert 'conveyor_queue_depth{priority="normal",queue="default",state="succeeded"} 40.0' in r.text

        # A killed process's counts stay; its replacement adds to them.
        victim = app.broker.workers()[0].pid
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: victim not in {w.pid for w in app.broker.workers()} and len(app.broker.workers()) == 2
        )
        for job in app.enqueue_many([work.message(i) for i in range(10)]):
            job.result(timeout=30)
        assert succeeded(httpx.get(metrics, headers=auth, timeout=10).text) == 50
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        app.close()
        log.close()
    assert proc.returncode == 0
