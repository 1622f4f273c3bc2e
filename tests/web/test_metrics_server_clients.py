"""The worker's /metrics server under slow or idle clients: others are served, and it stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_worker_metrics_endpoint import HERE, TOKEN, free_port, wait_for

from conveyor import Conveyor
from conveyor.web.credentials import Credentials
from conveyor.worker.metrics_server import MetricsServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"


def idle_client(port: int) -> socket.socket:
    """A connection that sent half a request and then says nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(HALF_REQUEST)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (reads EOF or a reset within the socket's timeout)."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MetricsServer]:
    app = Conveyor(f"sqlite:///{tmp_path}/m.db")
    metrics = MetricsServer(app, "127.0.0.1", 0, Credentials(token=TOKEN), client_timeout=30.0)
    metrics.start()
    try:
        yield metrics
    finally:
        metrics.close()
        app.close()


def test_an_idle_connection_does_not_block_a_scrape(server: MetricsServer) -> None:
    with idle_client(server.port):
        r = httpx.get(f"http://127.0.0.1:{server.port}/metrics", headers=AUTH, timeout=10)
        assert r.status_code == 200
        assert "conveyor_queue_depth" in r.text


def test_close_returns_while_an_idle_connection_is_open(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/m.db")
    metrics = MetricsServer(app, "127.0.0.1", 0, Credentials(token=TOKEN), client_timeout=600.0)
    metrics.start()
    idle = idle_client(metrics.port)
    try:
        closer = threading.Thread(target=metrics.close, daemon=True)
        closer.start()
        closer.join(30)
        # Stopped before the idle client gave up: it is still connected here.
        assert not closer.is_alive(), "close() waited for an idle client"
        assert closed_by_peer(idle), "the stopped server left the idle connection open"
    finally:
        idle.close()
        app.close()


def test_an_idle_connection_is_dropped_after_the_client_timeout(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/m.db")
    metrics = MetricsServer(app, "127.0.0.1", 0, Credentials(token=TOKEN), client_timeout=0.5)
    metrics.start()
    try:
        with idle_client(metrics.port) as idle:
            idle.settimeout(30)
            assert closed_by_peer(idle)
    finally:
        metrics.close()
        app.close()


def test_connections_beyond_the_bound_are_refused_and_scrapes_resume(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/m.db")
    metrics = MetricsServer(
        app, "127.0.0.1", 0, Credentials(token=TOKEN), client_timeout=600.0, max_connections=3
    )
    metrics.start()
    url = f"http://127.0.0.1:{metrics.port}/metrics"
    idle = [idle_client(metrics.port) for _ in range(3)]
    try:
        # Each idle client holds one of the 3 slots: a 4th connection is closed at once.
        with pytest.raises(httpx.TransportError) as refused:
            httpx.get(url, headers=AUTH, timeout=30)
        assert not isinstance(refused.value, httpx.TimeoutException), "queued, not refused"
        idle.pop().close()
        wait_for(lambda: _scrape_ok(url))
    finally:
        for sock in idle:
            sock.close()
        metrics.close()
        app.close()


def _scrape_ok(url: str) -> bool:
    try:
        return httpx.get(url, headers=AUTH, timeout=10).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_supervisor_stops_on_sigterm_while_a_client_is_idle(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    port = free_port()
    env = os.environ | {
        "CONVEYOR_URL": url,
        "PYTHONPATH": str(HERE),
        "CONVEYOR_METRICS_TOKEN": TOKEN,
        "CONVEYOR_DASHBOARD_TOKEN": "",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, "-m", "conveyor", "worker", "web_app:app", "--processes", "1"]
    cmd += ["--metrics-port", str(port), "--log-level", "WARNING"]
    with (tmp_path / "supervisor.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    metrics = f"http://127.0.0.1:{port}/metrics"
    idle: socket.socket | None = None
    try:
        wait_for(lambda: _scrape_ok(metrics))
        idle = idle_client(port)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # The idle client stays connected until the supervisor has exited.
        proc.wait(60)
        assert proc.returncode == 0, (tmp_path / "supervisor.log").read_text()
        assert idle.fileno() != -1
        print(f"supervisor exited {time.monotonic() - started:.2f} s after SIGTERM")
    finally:
        if idle is not None:
            idle.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
