"""What ``conveyor`` says when it starts (issue 25): each way a first run goes wrong is one line
that says what to do, exit non-zero, no traceback (but the user's own, when their module
raises); the worker prints its store and its tasks by queue. Real servers and real processes:
a closed port, a private redis-server with a password, PostgreSQL without the database."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_servers import free_port, server
from waiting import wait_for

from conveyor import Conveyor

POSTGRES = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PASSWORD = "s3cret-startup-pw"
#: Exit code of ``conveyor worker`` for a configuration error (sysexits' EX_CONFIG).
CONFIG_ERROR = 78

APP = """
from conveyor import Conveyor

app = Conveyor()

@app.task(queue="emails")
def send(to: str) -> None: ...

@app.task
def tidy() -> None: ...
"""


def conveyor(
    cwd: Path, *args: str, env: dict[str, str] | None = None, hide: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``conveyor ARGS`` run in ``cwd``; with ``hide``, as if that library were not installed."""
    code = "import sys; from conveyor.cli import main; main()"
    if hide:
        code = f"import sys; sys.modules[{hide!r}] = None; from conveyor.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=(env or _env()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CONVEYOR_URL", "PYTHONPATH")}
    return env | extra


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a failed command (asserting that it is one, with no traceback)."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "myapp.py").write_text(APP)
    return tmp_path


@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[int]:
    with server(tmp_path / "redis", "--requirepass", PASSWORD) as s:
        yield s.port


def test_version_is_the_package_metadata(tmp_path: Path) -> None:
    result = conveyor(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"conveyor, version {importlib.metadata.version('conveyor-queue')}"


# -- MODULE:APP ----------------------------------------------------------------------------


def test_a_module_that_is_not_there_names_the_directory_and_pythonpath(project: Path) -> None:
    line = one_line(conveyor(project, "status", "tasks:app", env=_env(PYTHONPATH="/opt/elsewhere")))
    assert "cannot import 'tasks'" in line and "no module named 'tasks'" in line, line
    assert f"current directory {project}" in line and "PYTHONPATH (/opt/elsewhere)" in line, line
    line = one_line(conveyor(project, "status", "myapp.sub:app"))
    assert "no module named 'myapp.sub'" in line and "PYTHONPATH (unset)" in line, line


def test_a_missing_attribute_lists_the_apps_of_the_module(project: Path) -> None:
    line = one_line(conveyor(project, "status", "myapp:application"))
    assert f"module myapp ({project / 'myapp.py'}) has no attribute 'application'" in line, line
    assert "Conveyor applications there: myapp:app" in line, line


def test_an_attribute_that_is_not_an_app_says_what_it_is(project: Path) -> None:
    line = one_line(conveyor(project, "status", "myapp:send"))
    assert "myapp:send is a Task, not a Conveyor application" in line and "myapp:app" in line, line


def test_a_path_without_a_colon_shows_the_form(project: Path) -> None:
    line = one_line(conveyor(project, "worker", "myapp"))
    assert "expected MODULE:APP (for instance myproject.tasks:app), got 'myapp'" in line, line


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("import json\nlimit = json.loads('{}')['limit']\n", "KeyError: 'limit'"),
        ("import no_such_dependency_xyz\n", "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"),
        ("def broken(:\n", "SyntaxError"),
    ],
)
def test_an_error_raised_by_the_users_module_shows_their_traceback(
    project: Path, source: str, error: str
) -> None:
    (project / "broken.py").write_text(source)
    for command in ("status", "worker"):
        result = conveyor(project, command, "broken:app")
        assert result.returncode == (CONFIG_ERROR if command == "worker" else 1), result.stderr
        *trace, last = result.stderr.strip().splitlines()
        assert trace[0] == "Traceback (most recent call last):" or error == "SyntaxError", result.stderr
        assert f'File "{project / "broken.py"}"' in result.stderr, result.stderr
        assert "importlib" not in result.stderr and "conveyor" not in "\n".join(trace), result.stderr
        assert last.startswith(f"Error: importing 'broken' raised {error}"), last
        assert "the traceback above is from that module's code" in last


# -- the store -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "port"),
    [("redis://127.0.0.1:{port}/0", "redis"), ("postgresql://postgres:pw@127.0.0.1:{port}/test", "pg")],
)
def test_a_refused_connection_names_host_and_port(tmp_path: Path, url: str, port: str) -> None:
    closed = free_port()  # nothing listens there
    line = one_line(conveyor(tmp_path, "status", url.format(port=closed)))
    assert f"connection refused at 127.0.0.1:{closed}: is the server running" in line, line
    assert ":pw@" not in line


def test_a_worker_waits_for_a_refused_store_saying_where_once_per_attempt(project: Path) -> None:
    closed = free_port()
    log = project / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "myapp:app"],
            cwd=project,
            env=_env(CONVEYOR_URL=f"redis://127.0.0.1:{closed}/0"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "waiting for its store" in log.read_text(), 30, "the worker's first attempt")
        text = log.read_text()
        assert "Traceback" not in text, text
        assert f"connection refused at 127.0.0.1:{closed}" in text, text
        assert proc.poll() is None, text  # a store that does not answer yet is waited for
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("auth", [f":wrong-{PASSWORD}@", ""])
def test_a_wrong_or_missing_redis_password_is_one_line(
    project: Path, protected_redis: int, auth: str
) -> None:
    url = f"redis://{auth}127.0.0.1:{protected_redis}/0"
    expected = (
        f"authentication failed at 127.0.0.1:{protected_redis}: wrong user or password"
        if auth
        else f"127.0.0.1:{protected_redis} requires a password"
    )
    line = one_line(conveyor(project, "status", url))
    assert expected in line and "wrong-s3cret" not in line, line
    worker = conveyor(project, "worker", "myapp:app", env=_env(CONVEYOR_URL=url))
    assert worker.returncode == CONFIG_ERROR, worker.stderr
    assert expected in worker.stderr.splitlines()[-1] and "Traceback" not in worker.stderr, worker.stderr
    assert "wrong-s3cret" not in worker.stderr


def test_an_unknown_postgres_database_says_how_to_create_it(project: Path) -> None:
    url = POSTGRES.rsplit("/", 1)[0] + "/nosuchdb"
    line = one_line(conveyor(project, "status", url))
    assert 'database "nosuchdb" does not exist on 127.0.0.1:5432: create it (createdb' in line, line
    worker = conveyor(project, "worker", "myapp:app", env=_env(CONVEYOR_URL=url))
    assert worker.returncode == CONFIG_ERROR and "Traceback" not in worker.stderr, worker.stderr
    assert 'database "nosuchdb" does not exist' in worker.stderr.splitlines()[-1], worker.stderr


@pytest.mark.parametrize(("url", "library", "extra"), [("redis://127.0.0.1:6379/0", "redis", "redis")])
def test_a_missing_extra_says_what_to_install(project: Path, url: str, library: str, extra: str) -> None:
    line = one_line(conveyor(project, "status", url, hide=library))
    assert f"pip install 'conveyor-queue[{extra}]'" in line and "ModuleNotFoundError" not in line, line
    worker = conveyor(project, "worker", "myapp:app", env=_env(CONVEYOR_URL=url), hide=library)
    assert worker.returncode == CONFIG_ERROR and "Traceback" not in worker.stderr, worker.stderr
    assert f"pip install 'conveyor-queue[{extra}]'" in worker.stderr.splitlines()[-1], worker.stderr


def test_a_missing_postgres_extra_says_what_to_install(project: Path) -> None:
    line = one_line(conveyor(project, "status", POSTGRES, hide="psycopg"))
    assert "pip install 'conveyor-queue[postgres]'" in line, line


def test_status_does_not_create_a_sqlite_store_that_is_not_there(project: Path) -> None:
    """The producer ran from another directory: the file is not here, and status says so
    instead of showing an empty store it just made."""
    line = one_line(conveyor(project, "status", "myapp:app"))
    assert f"no store at {project / 'conveyor.db'}" in line and "same absolute URL" in line, line
    assert not (project / "conveyor.db").exists()


# -- what the worker says it serves ----------------------------------------------------------


def test_the_worker_prints_its_store_and_tasks_and_warns_of_unserved_queues(project: Path) -> None:
    log = project / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "myapp:app", "--queues", "email,default"],
            cwd=project,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: " serving " in log.read_text(), 30, "the worker to serve")
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert f"store: sqlite:///{project}/conveyor.db (a new file: created now" in text, text
    assert "queue email (served): no task" in text
    assert "queue default (served): myapp.tidy" in text
    warnings = [line for line in text.splitlines() if " WARNING " in line]
    assert any(
        "served queue(s) email have no registered task: only jobs enqueued to them with queue=... run"
        " there (a typo? the tasks' queues: default, emails)" in line
        for line in warnings
    ), text
    assert any(
        "tasks whose queue this worker does not serve (their jobs wait for a worker that does,"
        " --queues email,default,emails): emails: myapp.send" in line
        for line in warnings
    ), text


def test_status_shows_the_workers_of_each_queue_and_flags_unserved_ready_jobs(
    tmp_path: Path, run_worker
) -> None:
    from click.testing import CliRunner

    from conveyor.cli import main

    app = Conveyor(f"sqlite:///{tmp_path}/s.db")

    @app.task(queue="emails")
    def send() -> None: ...

    @app.task(queue="email")
    def other() -> None: ...

    send.enqueue()
    other.enqueue(delay=3600)  # not ready: not flagged
    try:
        with run_worker(app, queues=["email"]):
            wait_for(app.broker.workers, 10, "the worker's heartbeat")
            result = CliRunner().invoke(main, ["status", app.url], catch_exceptions=False)
    finally:
        app.close()
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"Conveyor sqlite:///{tmp_path}/s.db" in out
    assert "unserved: queue emails has 1 ready job(s) and no live worker serves it" in out, out
    assert "(live workers serve: email); start one with --queues emails" in out
    assert "live workers (1)" in out
    rows = {cells[0]: cells[-1] for line in out.splitlines() if (cells := _cells(line))}
    assert rows["emails"] == "0" and rows["email"] == "1", out  # the workers column


def _cells(line: str) -> list[str]:
    """The cells of a table row (rich draws them between vertical bars)."""
    if not line.startswith("│"):
        return []
    return [cell.strip() for cell in line.strip().strip("│").split("│")]
