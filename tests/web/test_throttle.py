"""Failed authentication is throttled per client address and logged without the guess."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import httpx
import pytest
from web_helpers import AUTH, TOKEN, Client, csrf_of

from conveyor import Conveyor
from conveyor.web.credentials import Credentials
from conveyor.web.throttle import LIMIT, Throttle
from conveyor.worker.metrics_server import MetricsServer

GUESS = "guess-9d2e"


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x.y.z reaches the loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()]


def test_wrong_bearer_tokens_lock_out_their_address_only(app: Conveyor, serve, caplog) -> None:
    caplog.set_level(logging.WARNING, "conveyor")
    with serve(app) as url, from_address("127.0.0.2") as attacker, from_address("127.0.0.3") as other:
        for i in range(LIMIT):
            r = attacker.get(url + "/", headers={"Authorization": f"Bearer {GUESS}{i}"})
            assert r.status_code == 401
        r = attacker.get(url + "/", headers={"Authorization": f"Bearer {GUESS}"})
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        # Locked out: even the right token is refused, so a lucky guess cannot be told apart.
        assert attacker.get(url + "/", headers=AUTH).status_code == 429
        assert other.get(url + "/", headers=AUTH).status_code == 200
        assert other.get(url + "/", headers={"Authorization": "Bearer wrong"}).status_code == 401

    lines = failures(caplog)
    assert len(lines) == LIMIT + 1
    assert all("127.0.0.2" in line and "bearer" in line for line in lines[:LIMIT])
    assert "127.0.0.3" in lines[-1]
    assert not any(GUESS in r.getMessage() or r.exc_info for r in caplog.records)


def test_wrong_basic_passwords_are_throttled(app: Conveyor, serve, caplog) -> None:
    caplog.set_level(logging.WARNING, "conveyor")
    creds = Credentials(user="admin", password="s3cret")
    with serve(app, creds) as url, from_address("127.0.0.4") as attacker:
        for i in range(LIMIT):
            value = base64.b64encode(f"admin:{GUESS}{i}".encode()).decode()
            assert attacker.get(url + "/", headers={"Authorization": f"Basic {value}"}).status_code == 401
        right = base64.b64encode(b"admin:s3cret").decode()
        assert attacker.get(url + "/", headers={"Authorization": f"Basic {right}"}).status_code == 429
    assert len(failures(caplog)) == LIMIT
    assert not any(GUESS in r.getMessage() for r in caplog.records)


def test_wrong_login_form_tokens_are_throttled(app: Conveyor, serve, client: Client, caplog) -> None:
    caplog.set_level(logging.WARNING, "conveyor")
    with serve(app) as url, from_address("127.0.0.5") as attacker:
        page = attacker.get(url + "/", headers={"Accept": "text/html"})
        login = {"csrf": csrf_of(page.text), "next": "/"}
        attacker.cookies = page.cookies
        for i in range(LIMIT):
            assert attacker.post(url + "/login", data={**login, "token": f"{GUESS}{i}"}).status_code == 401
        r = attacker.post(url + "/login", data={**login, "token": TOKEN})
        assert r.status_code == 429
        assert "retry-after" in r.headers
        # A browser that just opens a page is not refused: it gets the login form.
        assert attacker.get(url + "/", headers={"Accept": "text/html"}).status_code == 401
        assert client.get(url + "/", headers=AUTH).status_code == 200
    lines = failures(caplog)
    assert len(lines) == LIMIT
    assert all("login" in line and "127.0.0.5" in line for line in lines)
    assert not any(GUESS in r.getMessage() for r in caplog.records)


def test_the_worker_metrics_endpoint_is_throttled(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, "conveyor")
    app = Conveyor(f"sqlite:///{tmp_path}/m.db")
    metrics = MetricsServer(app, "127.0.0.1", 0, Credentials(token=TOKEN))
    metrics.start()
    url = f"http://127.0.0.1:{metrics.port}/metrics"
    try:
        with from_address("127.0.0.6") as attacker, from_address("127.0.0.7") as other:
            for i in range(LIMIT):
                assert attacker.get(url, headers={"Authorization": f"Bearer {GUESS}{i}"}).status_code == 401
            r = attacker.get(url, headers=AUTH)
            assert r.status_code == 429
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert other.get(url, headers=AUTH).status_code == 200
    finally:
        metrics.close()
        app.close()
    assert len(failures(caplog)) == LIMIT
    assert not any(GUESS in r.getMessage() for r in caplog.records)


def test_the_lockout_ends_when_the_window_passes() -> None:
    throttle = Throttle(limit=3, window=60.0)
    for t in (0.0, 10.0, 20.0):
        assert throttle.retry_after("a", t) is None
        throttle.failed("a", t)
    assert throttle.retry_after("a", 30.0) == pytest.approx(30.0)
    assert throttle.retry_after("b", 30.0) is None
    assert throttle.retry_after("a", 60.0) is None  # the first failure left the window
    throttle.failed("a", 60.0)
    assert throttle.retry_after("a", 61.0) == pytest.approx(9.0)


def test_ipv6_clients_are_counted_per_64_network() -> None:
    throttle = Throttle(limit=2, window=60.0)
    throttle.failed("2001:db8:1:2::1", 0.0)
    throttle.failed("2001:db8:1:2::ffff", 0.0)
    assert throttle.retry_after("2001:db8:1:2:abcd::9", 1.0) is not None
    assert throttle.retry_after("2001:db8:1:3::1", 1.0) is None


def test_tracked_clients_are_bounded() -> None:
    throttle = Throttle(limit=2, window=60.0, max_clients=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", float(i) / 1000)
    assert throttle.tracked <= 100
