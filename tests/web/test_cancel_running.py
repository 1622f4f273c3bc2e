"""The dashboard's Cancel button on a running job, through a real worker (docs/job-control.md);
and the CLI's ``conveyor cancel``."""

from __future__ import annotations

import threading
import time

import pytest
from click.testing import CliRunner
from web_helpers import AUTH, Client, csrf_of

from conveyor import Conveyor, JobCancelled, current_job
from conveyor.cli import main


def test_cancel_a_running_job_from_its_page(app: Conveyor, serve, client: Client, run_worker) -> None:
    started = threading.Event()

    @app.task
    def long() -> None:
        started.set()
        while not current_job().cancelled:
            time.sleep(0.01)

    with run_worker(app, lease=60), serve(app) as url:
        job = long.enqueue()
        assert started.wait(10)
        page = client.get(url + f"/jobs/{job.id}", headers=AUTH).text
        assert f'action="/jobs/{job.id}/cancel"' in page  # offered on a running job

        r = client.post(url + f"/jobs/{job.id}/cancel", headers=AUTH, data={"csrf": csrf_of(page)})

        assert r.status_code == 303
        with pytest.raises(JobCancelled):
            job.result(timeout=5)
        page = client.get(url + f"/jobs/{job.id}", headers=AUTH).text
        assert f'action="/jobs/{job.id}/cancel"' not in page
    assert job.status() == "cancelled"


def test_the_cancel_command_says_what_happened(app: Conveyor, run_worker) -> None:
    started = threading.Event()

    @app.task
    def long() -> None:
        started.set()
        while not current_job().cancelled:
            time.sleep(0.01)

    @app.task
    def later() -> None: ...

    target = app.url
    queued = later.enqueue(delay=600)
    runner = CliRunner()
    assert runner.invoke(main, ["cancel", target, queued.id]).output.strip() == f"{queued.id}: cancelled"
    with run_worker(app, lease=60):
        job = long.enqueue()
        assert started.wait(10)
        result = runner.invoke(main, ["cancel", target, job.id, "--grace", "5"])
        assert result.output.strip() == f"{job.id}: cancelling"
        with pytest.raises(JobCancelled):
            job.result(timeout=5)
    assert runner.invoke(main, ["cancel", target, job.id]).output.strip() == f"{job.id}: finished"
    missing = runner.invoke(main, ["cancel", target, "no-such-job"])
    assert (missing.exit_code, missing.output.strip()) == (1, "no-such-job: missing")
