"""A supervisor serving metrics keeps no files of its dead worker processes, and no counts lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis_servers import free_port
from waiting import wait_for

WEB = Path(__file__).parent.parent / "web"
TOKEN = "metrics-token-files"


def _succeeded(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "conveyor_finished_total" and s.labels.get("outcome") == "succeeded"
    )


def _metrics_dir(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (entry,) = [e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(entry.split(b"=", 1)[1].decode())


@pytest.mark.slow
def test_the_files_of_killed_worker_processes_are_folded_into_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    port = free_port()
    env = os.environ | {"CONVEYOR_URL": url, "PYTHONPATH": str(WEB), "CONVEYOR_METRICS_TOKEN": TOKEN}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, "-m", "conveyor", "worker", "web_app:app", "--processes", "1", "--lease", "2"]
    cmd += ["--metrics-port", str(port), "--log-level", "WARNING"]
    log = (tmp_path / "supervisor.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    sys.path.insert(0, str(WEB))
    from web_app import app, work

    app.close()
    app.url = url
    metrics = f"http://127.0.0.1:{port}/metrics"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        done = 0
        for _ in range(4):
            (child,) = wait_for(app.broker.workers, what="a worker process")
            directory = _metrics_dir(child.pid)
            for job in app.enqueue_many([work.message(i) for i in range(5)]):
                job.result(timeout=30)
            done += 5
            # A job's result is visible once its ack lands; the worker counts it just after.
            wait_for(lambda n=done: _succeeded(httpx.get(metrics, headers=auth, timeout=10).text) == n,
                     what=f"{done} counted")  # fmt: skip
            os.kill(child.pid, signal.SIGKILL)
            wait_for(lambda c=child: c.pid not in {w.pid for w in app.broker.workers()}, what="its end")
            wait_for(
                lambda c=child, d=directory: not any(f"_{c.pid}.db" in p.name for p in d.iterdir()),
                what="its files",
            )
        wait_for(app.broker.workers, what="the last replacement")
        for job in app.enqueue_many([work.message(i) for i in range(5)]):
            job.result(timeout=30)
        done += 5
        wait_for(
            lambda: _succeeded(httpx.get(metrics, headers=auth, timeout=10).text) >= done, what="the last 5"
        )
        assert _succeeded(httpx.get(metrics, headers=auth, timeout=10).text) == done
        pids = {p.name.rsplit("_", 1)[1].removesuffix(".db") for p in directory.iterdir()}
        assert pids <= {"dead", str(app.broker.workers()[0].pid)}, pids
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        app.close()
        log.close()
        sys.path.remove(str(WEB))
    assert proc.returncode == 0
