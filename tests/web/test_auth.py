"""Authentication on every route: 401 without credentials; token, Basic and session cookie."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from click.testing import CliRunner
from web_helpers import AUTH, TOKEN, Client, csrf_of, make_dead

from conveyor import Conveyor
from conveyor.cli import main
from conveyor.errors import ConfigurationError
from conveyor.web.credentials import Credentials

PAGES = [
    "/",
    "/api/overview",
    "/metrics",
    "/queues/default",
    "/dead",
    "/scheduled",
    "/workers",
    "/tasks",
    "/search?q=noop",
]
EVERY_GET = [*PAGES, "/jobs/nope", "/no/such/route", "/static/style.css"]
EVERY_POST = ["/dead/replay", "/dead/purge", "/jobs/nope/replay", "/jobs/nope/cancel", "/logout", "/nope"]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def job_app(app: Conveyor) -> Conveyor:
    @app.task
    def noop() -> None: ...

    noop.enqueue()
    return app


def test_every_route_is_401_without_credentials(job_app, serve, client: Client) -> None:
    with serve(job_app) as url:
        for path in EVERY_GET:
            r = client.get(url + path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == 'Bearer realm="Conveyor"'
        for path in EVERY_POST:
            assert client.post(url + path, data={"csrf": "x"}).status_code == 401, path


def test_bearer_token_opens_every_page(job_app, serve, client: Client) -> None:
    with serve(job_app) as url:
        for path in PAGES:
            assert client.get(url + path, headers=AUTH).status_code == 200, path
        assert client.get(url + "/jobs/nope", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    "header",
    [
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
        {"Authorization": "Basic !!!"},
        basic("admin", TOKEN),
    ],
)
def test_wrong_credentials_are_401(job_app, serve, client: Client, header) -> None:
    with serve(job_app) as url:
        assert client.get(url + "/", headers=header).status_code == 401
        assert client.get(url + "/metrics", headers=header).status_code == 401


def test_basic_auth(job_app, serve, client: Client) -> None:
    with serve(job_app, Credentials(user="admin", password="s3cret:pw")) as url:
        r = client.get(url + "/api/overview")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('Basic realm="Conveyor"')
        assert client.get(url + "/api/overview", headers=basic("admin", "s3cret:pw")).status_code == 200
        assert client.get(url + "/metrics", headers=basic("admin", "s3cret:pw")).status_code == 200
        assert client.get(url + "/", headers=basic("admin", "wrong")).status_code == 401
        assert client.get(url + "/", headers=basic("root", "s3cret:pw")).status_code == 401
        assert client.get(url + "/", headers=AUTH).status_code == 401  # no token configured


def test_login_form_sets_a_strict_httponly_session(job_app, serve, client: Client) -> None:
    with serve(job_app) as url:
        page = client.get(url + "/dead?queue=default", headers={"Accept": "text/html"})
        assert page.status_code == 401
        assert 'action="/login"' in page.text
        login = {"csrf": csrf_of(page.text), "token": TOKEN, "next": "/dead?queue=default"}

        wrong = client.post(url + "/login", data={**login, "token": "nope"}, cookies=page.cookies)
        assert wrong.status_code == 401
        assert "set-cookie" not in wrong.headers or "conveyor_session" not in wrong.headers["set-cookie"]

        r = client.post(url + "/login", data=login, cookies=page.cookies)
        assert r.status_code == 303
        assert r.headers["location"] == "/dead?queue=default"
        cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("conveyor_session="))
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        session = {"conveyor_session": r.cookies["conveyor_session"]}
        assert client.get(url + "/", cookies=session).status_code == 200
        assert client.get(url + "/metrics", cookies=session).status_code == 200

        forged = {"conveyor_session": "99999999999." + "0" * 64}
        assert client.get(url + "/", cookies=forged).status_code == 401


def test_login_needs_its_csrf_token(job_app, serve, client: Client) -> None:
    with serve(job_app) as url:
        page = client.get(url + "/", headers={"Accept": "text/html"})
        r = client.post(url + "/login", data={"token": TOKEN, "csrf": "forged"}, cookies=page.cookies)
        assert r.status_code == 403
        r = client.post(url + "/login", data={"token": TOKEN, "csrf": csrf_of(page.text)})  # no nonce cookie
        assert r.status_code == 403


def test_login_never_redirects_off_site(job_app, serve, client: Client) -> None:
    with serve(job_app) as url:
        page = client.get(url + "/", headers={"Accept": "text/html"})
        for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
            data = {"csrf": csrf_of(page.text), "token": TOKEN, "next": target}
            r = client.post(url + "/login", data=data, cookies=page.cookies)
            assert r.headers["location"] == "/"


def test_no_auth_serves_anonymously_but_keeps_csrf(job_app, serve, client: Client) -> None:
    dead = make_dead(job_app)
    with serve(job_app, None) as url:
        assert client.get(url + "/").status_code == 200
        assert client.get(url + "/metrics").status_code == 200
        assert client.post(url + f"/jobs/{dead}/purge").status_code == 403
        assert job_app.broker.get(dead) is not None


def test_security_headers(job_app, serve, client: Client) -> None:
    with serve(job_app) as url:
        for r in (client.get(url + "/"), client.get(url + "/", headers=AUTH)):
            assert "script-src 'nonce-" in r.headers["content-security-policy"]
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["cache-control"] == "no-store"


def test_dashboard_command_refuses_to_start_without_credentials(tmp_path, monkeypatch) -> None:
    for name in ("CONVEYOR_DASHBOARD_TOKEN", "CONVEYOR_DASHBOARD_USER", "CONVEYOR_DASHBOARD_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, ["dashboard", f"sqlite:///{tmp_path}/x.db"])
    assert result.exit_code != 0
    assert "CONVEYOR_DASHBOARD_TOKEN" in result.output
    assert "--no-auth" in result.output


def test_half_configured_basic_auth_is_an_error(monkeypatch) -> None:
    from conveyor.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        Credentials.from_env({"CONVEYOR_DASHBOARD_USER": "admin"})
    assert (
        Credentials.from_env(
            {"CONVEYOR_METRICS_TOKEN": "m", "CONVEYOR_DASHBOARD_TOKEN": "d"}, metrics=True
        ).token
        == "m"
    )
    assert Credentials.from_env({"CONVEYOR_METRICS_TOKEN": "m"}).token is None


def test_worker_metrics_refuse_to_serve_without_credentials(tmp_path: Path) -> None:
    from conveyor.worker.metrics_server import MetricsServer

    app = Conveyor(f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(ConfigurationError, match="CONVEYOR_METRICS_TOKEN"):
        MetricsServer(app, "127.0.0.1", 0, Credentials())
    app.close()
