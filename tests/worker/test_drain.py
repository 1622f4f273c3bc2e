"""conveyor.testing.drain: a real worker in the test's process, until nothing is left to run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conveyor import Conveyor, RetryPolicy
from conveyor.testing import TasksFailed, drain, isolated

QUICK = RetryPolicy(max_attempts=3, base=0.05, jitter="none")


@pytest.fixture
def app():
    application = Conveyor("sqlite:///:memory:")
    yield application
    application.close()


def test_drain_runs_every_job_and_its_follow_ups_and_returns_them(app: Conveyor) -> None:
    @app.task(queue="mail")
    def send(to: str) -> str:
        return f"sent to {to}"

    @app.task
    def signup(email: str) -> int:
        send.enqueue(email)
        return 1

    jobs = [signup.enqueue(f"u{i}@example.com") for i in range(5)]
    drained = drain(app)

    assert [j.result(timeout=0) for j in jobs] == [1] * 5
    assert len(drained.of(signup)) == 5
    assert sorted(j.payload for j in drained.of(send)) == sorted(
        f'[["u{i}@example.com"],{{}}]'.encode() for i in range(5)
    )
    assert len(drained.succeeded) == 10 and drained.dead == [] and drained.scheduled == []


def test_quick_retries_run_and_a_far_delay_is_left(app: Conveyor) -> None:
    tries: list[int] = []

    @app.task(retry=QUICK)
    def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("try again")
        return "ok"

    @app.task
    def later() -> None: ...

    job = flaky.enqueue()
    left = later.enqueue(delay=3600)
    drained = drain(app)

    assert job.result(timeout=0) == "ok"
    assert len(tries) == 3
    assert [j.attempt for j in drained.jobs] == [3]
    assert left.status() == "scheduled"


def test_a_result_that_is_not_json_fails_as_in_production(app: Conveyor) -> None:
    """No eager shortcut: the result is encoded into the store, so a set fails the job here too."""

    @app.task(retry=RetryPolicy(max_attempts=1))
    def tags() -> set[str]:
        return {"a", "b"}

    job = tags.enqueue()
    with pytest.raises(TasksFailed) as failed:
        drain(app)

    assert job.status() == "dead"
    assert failed.value.drained.dead[0].id == job.id
    assert "tags" in str(failed.value) and "attempt 1" in str(failed.value)


def test_check_false_returns_the_dead_instead_of_raising(app: Conveyor) -> None:
    @app.task(retry=QUICK)
    def boom() -> None:
        raise ValueError("always")

    boom.enqueue()
    drained = drain(app, check=False)

    assert [(j.state, j.attempt) for j in drained.dead] == [("dead", 3)]
    assert [e["type"] for e in drained.dead[0].errors] == ["ValueError"] * 3


def test_a_drain_that_does_not_finish_says_what_is_left(app: Conveyor) -> None:
    release = threading.Event()

    @app.task
    def stuck() -> None:
        release.wait(30)

    stuck.enqueue()
    with pytest.raises(TimeoutError, match="left in the queues"):
        drain(app, timeout=0.5)  # the stopping worker gives it its grace, then lets it go
    release.set()


def test_isolated_points_the_app_at_a_fresh_memory_store_then_back(tmp_path: Path) -> None:
    own = f"sqlite:///{tmp_path}/own.db"
    app = Conveyor(own)

    @app.task
    def noop() -> None: ...

    with isolated(app):
        job = noop.enqueue()
        drain(app)
        assert job.status() == "succeeded"
    assert app.url == own
    assert app.broker.get(job.id) is None
    app.close()


def test_the_pytest_plugin_gives_users_the_fixtures(tmp_path: Path) -> None:
    """A user's own test suite, run by pytest in another process: the fixtures come from the
    ``pytest11`` entry point of the installed package, nothing to import."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent(
            """
            from conveyor import Conveyor

            app = Conveyor("sqlite:///tasks.db")

            @app.task
            def double(x: int) -> int:
                return 2 * x
            """
        )
    )
    (tmp_path / "test_tasks.py").write_text(
        textwrap.dedent(
            """
            from tasks import app, double

            def test_double(conveyor_isolated, conveyor_drain):
                conveyor_isolated(app)
                job = double.enqueue(21)
                drained = conveyor_drain(app)
                assert job.result(timeout=0) == 42
                assert len(drained.succeeded) == 1
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_tasks.py")],
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert not (tmp_path / "tasks.db").exists()  # the test never touched the app's own store
