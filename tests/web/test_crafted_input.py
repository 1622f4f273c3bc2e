"""Crafted input never makes a 500: bad query values are 4xx, absurd stored times still render,
and an error page keeps the security headers and logs one line, never a traceback."""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from pathlib import Path

import pytest
from web_helpers import AUTH, Client

from conveyor import Conveyor

ABSURD = [1e308, -1e18, math.inf, -math.inf, 253402300800.0, -62135596801.0]


def secure(r) -> None:
    """The headers every response carries, as on a normal page."""
    policy = r.headers["content-security-policy"]
    assert "script-src 'nonce-" in policy and "frame-ancestors 'none'" in policy
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"


def no_traceback(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert not any(r.exc_info for r in caplog.records)
    assert not any("Traceback" in r.getMessage() for r in caplog.records)


def store_times(app: Conveyor, job_id: str, **columns: float) -> None:
    """Write times into the job's row as any writer to the store could (bypassing enqueue)."""
    path = app.url.removeprefix("sqlite:///")
    sets = ", ".join(f"{name} = ?" for name in columns)
    with sqlite3.connect(path) as db:
        assert db.execute(
            f"UPDATE conveyor_jobs SET {sets} WHERE id = ?", [*columns.values(), job_id]
        ).rowcount


@pytest.fixture
def noop(app: Conveyor):
    @app.task
    def noop() -> None: ...

    return noop


@pytest.mark.parametrize("offset", ["%C2%B2", "-1", "1e3", "x", "9" * 40, "%00"])
@pytest.mark.parametrize("page", ["/queues/default", "/dead", "/scheduled"])
def test_an_invalid_offset_is_400(app, noop, serve, client: Client, caplog, capfd, page, offset) -> None:
    noop.enqueue()
    with serve(app) as url:
        r = client.get(f"{url}{page}?offset={offset}", headers=AUTH)
        assert r.status_code == 400, r.text
        assert "offset" in r.text
        secure(r)
        assert client.get(f"{url}{page}?offset=0", headers=AUTH).status_code == 200
    no_traceback(caplog, capfd)


@pytest.mark.parametrize("due", ABSURD)
def test_pages_show_an_absurd_stored_due_time(app, noop, serve, client: Client, caplog, capfd, due) -> None:
    job_id = noop.enqueue(delay=60).id
    store_times(app, job_id, run_at=due)
    with serve(app) as url:
        for page in [
            "/",
            "/api/overview",
            "/scheduled",
            "/queues/default",
            "/queues/default?state=scheduled",
            f"/jobs/{job_id}",
        ]:
            r = client.get(url + page, headers=AUTH)
            assert r.status_code == 200, page
            secure(r)
    no_traceback(caplog, capfd)


def test_pages_show_absurd_times_of_a_finished_job(
    app, noop, serve, client: Client, caplog, capfd, run_worker
) -> None:
    job = noop.enqueue()
    with run_worker(app):
        job.result(timeout=30)
    store_times(app, job.id, enqueued_at=-1e18, started_at=1e308, finished_at=math.inf, run_at=-math.inf)
    with serve(app) as url:
        for page in ["/", "/api/overview", "/queues/default?state=succeeded", f"/jobs/{job.id}"]:
            r = client.get(url + page, headers=AUTH)
            assert r.status_code == 200, page
            secure(r)
    no_traceback(caplog, capfd)


def test_a_failing_store_is_a_500_with_headers_and_one_log_line(
    tmp_path: Path, serve, client: Client, caplog, capfd
) -> None:
    caplog.set_level(logging.INFO)
    app = Conveyor(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    with serve(app) as url:
        r = client.get(url + "/queues/default", headers=AUTH)
        assert r.status_code == 500
        secure(r)
        assert "Traceback" not in r.text
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1
    assert "/queues/default" in lines[0].getMessage()
    no_traceback(caplog, capfd)


def test_the_time_filters_never_raise() -> None:
    from conveyor.web.app import _ago, _seconds, _when

    for value in [*ABSURD, math.nan, 0.0, time.time()]:
        assert isinstance(_when(value), str)
        assert isinstance(_ago(value), str)
        assert isinstance(_seconds(value), str)
        assert len(_seconds(abs(value) if not math.isnan(value) else value)) < 40
