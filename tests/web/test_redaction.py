"""Secrets never reach a page: secret-named arguments, their values anywhere, URL passwords."""

from __future__ import annotations

import inspect
import json

import pytest
from web_helpers import AUTH, Client, make_dead

import conveyor.app
from conveyor import Conveyor
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.redact import Redactor

CANARY = "canary-secret-123"
URL_CANARY = "url-canary-pw-987"


@pytest.fixture
def secret_app(tmp_path, monkeypatch) -> Conveyor:
    """An app whose store URL carries a password (served by a SQLite file underneath)."""
    monkeypatch.setattr(
        conveyor.app,
        "open_broker",
        lambda url, retention: SQLiteBroker(f"sqlite:///{tmp_path}/s.db", retention),
    )
    application = Conveyor(f"postgresql://conveyor:{URL_CANARY}@db.internal:5432/jobs")
    yield application
    application.close()


def test_no_page_shows_a_secret(secret_app: Conveyor, serve, client: Client) -> None:
    @secret_app.task
    def login(user: str, password: str, options: dict) -> None: ...

    ok = login.enqueue("ada", CANARY, {"api_key": CANARY + "-2", "dsn": f"redis://u:{URL_CANARY}@h/0"})
    by_name = login.enqueue(user="bob", password=CANARY, options={})
    login.enqueue("eve", password=CANARY, options={})
    dead = make_dead(
        secret_app,
        error_type="AuthError",
        message=f"login failed for password {CANARY} at postgresql://x:{URL_CANARY}@db/x; token={CANARY}",
    )
    with serve(secret_app) as url:
        pages = [
            "/",
            "/api/overview",
            "/metrics",
            "/queues/default",
            "/queues/default?state=ready",
            "/queues/default?state=dead",
            "/dead",
            "/scheduled",
            "/workers",
            f"/jobs/{ok.id}",
            f"/jobs/{by_name.id}",
            f"/jobs/{dead}",
        ]
        for path in pages:
            r = client.get(url + path, headers=AUTH)
            assert r.status_code == 200, path
            assert CANARY not in r.text, path
            assert URL_CANARY not in r.text, path
        job_page = client.get(url + f"/jobs/{dead}", headers=AUTH).text
        assert "***" in job_page
        assert "postgresql://conveyor:***@db.internal:5432/jobs" in job_page
        assert "AuthError" in job_page


def test_positional_arguments_are_named_by_the_signature() -> None:
    def task(user: str, token: str) -> None: ...

    r = Redactor()
    shown = r.arguments(json.dumps([["ada", "tok-value"], {}]).encode(), inspect.signature(task))
    assert shown == {"args": ["ada", "***"], "kwargs": {}}
    assert r.text("it said tok-value twice: tok-value") == "it said *** twice: ***"


def test_nested_keys_urls_and_pairs() -> None:
    r = Redactor()
    shown = r.arguments(
        json.dumps([[], {"config": {"Authorization": "Bearer xyz", "hosts": ["amqp://a:b@c/"]}}]).encode(),
        None,
    )
    assert shown == {"args": [], "kwargs": {"config": {"Authorization": "***", "hosts": ["amqp://a:***@c/"]}}}
    assert "Bearer xyz" not in r.text("header was Bearer xyz")
    assert r.text('client_secret="abc def" then') == "client_secret=*** then"
    assert r.text("API_KEY: k-1, next") == "API_KEY: ***, next"


def test_an_undecodable_payload_is_not_shown() -> None:
    assert Redactor().arguments(b"\xff" + CANARY.encode(), None) is None


def test_a_job_with_a_mebibyte_argument_shows_its_page_cut_and_masked(
    secret_app: Conveyor, serve, client
) -> None:
    """The job page of issue 26 took 24.7 s for 24 KB; the text is shown cut, secrets masked."""

    @secret_app.task
    def upload(blob: str, token: str) -> None: ...

    job = upload.enqueue("A" * 900_000 + f" token={CANARY}", CANARY)
    with serve(secret_app) as url:
        r = client.get(url + f"/jobs/{job.id}", headers=AUTH)
    assert r.status_code == 200
    assert "more characters not shown" in r.text
    assert CANARY not in r.text
