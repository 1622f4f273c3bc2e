"""``conveyor worker MODULE:APP --burst``: drain what is due, then exit 0 (WorkerConfig.burst)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.priority import Fairness

pytestmark = pytest.mark.slow

APP = textwrap.dedent(
    """
    import os
    from pathlib import Path

    from conveyor import Conveyor, RetryPolicy

    app = Conveyor(os.environ["BURST_URL"])
    quick = RetryPolicy(max_attempts=3, base=0.2, jitter="none")


    @app.task(queue="work")
    def echo(x: int) -> int:
        return x


    @app.task(queue="work", retry=quick)
    def flaky() -> str:
        mark = Path(os.environ["BURST_DIR"]) / "flaky-ran"
        if not mark.exists():
            mark.write_text("once")
            raise RuntimeError("first attempt fails")
        return "second time lucky"


    @app.task(queue="work", retry=quick)
    def boom() -> None:
        raise ValueError("always")
    """
)


@pytest.fixture
def burst_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "burst_app.py").write_text(APP)
    url = f"sqlite:///{tmp_path}/burst.db"
    monkeypatch.setenv("BURST_URL", url)
    monkeypatch.setenv("BURST_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("burst_app", None)
    import burst_app

    yield burst_app
    burst_app.app.close()
    sys.modules.pop("burst_app", None)


def burst(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "conveyor", "worker", "burst_app:app", "--queues", "work", "--burst", *args]
    return subprocess.run(
        cmd,
        check=False,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_burst_runs_what_is_due_with_its_quick_retries_then_exits_0(tmp_path: Path, burst_app) -> None:
    app: Conveyor = burst_app.app
    echoes = [burst_app.echo.enqueue(i) for i in range(40)]
    flaky, boom = burst_app.flaky.enqueue(), burst_app.boom.enqueue()
    later = burst_app.echo.enqueue(-1, delay=3600)

    started = time.monotonic()
    done = burst(tmp_path, "--processes", "2")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 45
    assert "burst done" in done.stderr

    assert [j.result(timeout=0) for j in echoes] == list(range(40))
    assert flaky.result(timeout=0) == "second time lucky"  # its retry, due in 0.2 s, was waited for
    info = boom.info()
    assert info.state == "dead" and info.attempt == 3  # each retry was due within --burst-wait
    assert later.status() == "scheduled"  # an hour away: left for the next worker
    assert app.broker.stats(["work"])[0].total("running") == 0


def test_burst_wait_decides_which_scheduled_jobs_keep_it_serving(tmp_path: Path, burst_app) -> None:
    far = burst_app.echo.enqueue(1, delay=30.0)

    done = burst(tmp_path, "--burst-wait", "0")
    assert done.returncode == 0, done.stderr
    assert far.status() == "scheduled"  # not due yet, and no wait asked for

    soon = burst_app.echo.enqueue(2, delay=1.0)
    done = burst(tmp_path, "--burst-wait", "10")
    assert done.returncode == 0, done.stderr
    assert soon.result(timeout=0) == 2  # waited for: due within 10 s
    assert far.status() == "scheduled"  # due later than that


def test_a_paused_queue_does_not_keep_a_burst_worker_alive(tmp_path: Path, burst_app) -> None:
    app: Conveyor = burst_app.app
    app.pause("work")
    waiting = burst_app.echo.enqueue(7)

    done = burst(tmp_path)
    assert done.returncode == 0, done.stderr
    assert waiting.status() == "ready"

    app.resume("work")
    assert burst(tmp_path).returncode == 0
    assert waiting.result(timeout=0) == 7


def test_a_worker_refuses_an_in_memory_store(tmp_path: Path, burst_app, monkeypatch) -> None:
    """Worker processes cannot open the test process's memory: said at once, not served empty."""
    monkeypatch.setenv("BURST_URL", "sqlite:///:memory:")
    done = burst(tmp_path, timeout=30)
    assert done.returncode != 0
    assert "in-memory store" in done.stderr and "conveyor.testing.drain" in done.stderr


def test_a_crashed_workers_expired_lease_is_reclaimed_and_run(tmp_path: Path, burst_app) -> None:
    app: Conveyor = burst_app.app
    job = burst_app.echo.enqueue(5)
    [taken] = app.broker.reserve(["work"], 1, 0.01, "crashed", Fairness(app.priorities.weights))
    assert taken.id == job.id  # leased for 10 ms by a worker that never reports back

    done = burst(tmp_path)
    assert done.returncode == 0, done.stderr
    assert job.result(timeout=0) == 5
    assert job.info().attempt == 2
