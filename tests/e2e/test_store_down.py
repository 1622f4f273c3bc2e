"""A store that is down or refuses us, seen from outside: a producer, ``conveyor worker`` and
``conveyor status`` against real servers that are closed, protected by a password, or lack the
database. A down store is an error naming it in one line (or, for a worker, a wait with one log
line per attempt); a store that refuses us is a configuration error that ends the command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_proxy import FaultProxy, fault_proxy
from harness import HERE, wait_for
from redis_servers import free_port, server
from stores import POSTGRES_URL

from conveyor import Conveyor
from conveyor.errors import ConfigurationError, StoreUnavailable

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-pw"
#: Exit code of ``conveyor worker`` (and of its processes) for a configuration error.
CONFIG_ERROR = 78


def _closed_port() -> int:
    return free_port()  # nothing listens there: connections are refused


@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[int]:
    with server(tmp_path / "redis", "--requirepass", PASSWORD) as s:
        yield s.port


def _enqueue(url: str) -> tuple[BaseException, float]:
    app = Conveyor(url)

    @app.task
    def noop() -> None: ...

    start = time.monotonic()
    try:
        noop.enqueue()
    except BaseException as exc:
        return exc, time.monotonic() - start
    finally:
        app.close()
    raise AssertionError(f"enqueue on {url} succeeded")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0?socket_connect_timeout=2",
        "redis://:pw@127.0.0.1:{port}/0",
        "postgresql://postgres:pw@127.0.0.1:{port}/test?connect_timeout=2",
    ],
)
def test_enqueue_on_a_closed_port_fails_fast_naming_the_store(url: str) -> None:
    exc, took = _enqueue(url.format(port=_closed_port()))
    assert isinstance(exc, StoreUnavailable), repr(exc)
    text = str(exc)
    assert "\n" not in text and "127.0.0.1" in text and "pw" not in text, text
    assert "refused" in text.lower(), text
    assert took < 2.0, took


def test_enqueue_to_a_blackholed_store_fails_within_the_connect_timeout() -> None:
    with fault_proxy("127.0.0.1", 5432) as proxy:
        proxy.mode = "blackhole"
        exc, took = _enqueue(f"postgresql://postgres@{proxy.url_netloc()}/test?connect_timeout=2")
    assert isinstance(exc, StoreUnavailable), repr(exc)
    assert 1.5 < took < 4.0, took


@pytest.mark.parametrize("auth", ["wrong:password", "no password"])
def test_enqueue_refused_by_redis_is_a_configuration_error_at_once(protected_redis: int, auth: str) -> None:
    netloc = (
        f":wrong-pw@127.0.0.1:{protected_redis}"
        if auth == "wrong:password"
        else f"127.0.0.1:{protected_redis}"
    )
    exc, took = _enqueue(f"redis://{netloc}/0")
    assert isinstance(exc, ConfigurationError), repr(exc)
    text = str(exc)
    assert "\n" not in text and "wrong-pw" not in text and str(protected_redis) in text, text
    assert "password" in text.lower() or "auth" in text.lower(), text
    assert took < 2.0, took


def test_enqueue_to_an_unknown_postgres_database_is_a_configuration_error_at_once() -> None:
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/no_such_db_conveyor"
    exc, took = _enqueue(url)
    assert isinstance(exc, ConfigurationError), repr(exc)
    assert "no_such_db_conveyor" in str(exc) and "\n" not in str(exc), str(exc)
    assert took < 2.0, took


# -- the command line ------------------------------------------------------------------------


def _env(url: str) -> dict[str, str]:
    return os.environ | {"CONVEYOR_URL": url, "PYTHONPATH": str(HERE)}


def _worker(url: str, tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"worker-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "conveyor", "worker", "e2e_app:app", "--lease", "2", *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=_env(url), stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _behind(proxy: FaultProxy, backend: str) -> tuple[str, str]:
    """A fresh store of ``backend`` reached through ``proxy``, and the same store reached directly."""
    if backend == "redis":
        prefix = f"down-{os.urandom(4).hex()}"
        return (
            f"redis://{proxy.url_netloc()}/10?prefix={prefix}",
            f"redis://127.0.0.1:6379/10?prefix={prefix}",
        )
    schema = f"conveyor_down_{os.urandom(4).hex()}"
    return (
        f"postgresql://postgres@{proxy.url_netloc()}/test?schema={schema}",
        f"{POSTGRES_URL}?schema={schema}",
    )


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_a_worker_waits_for_a_down_store_with_one_line_per_attempt_then_serves(
    backend: str, tmp_path: Path
) -> None:
    """The store is unreachable when the worker starts (the proxy refuses connections), then
    comes back: the worker logs a few single lines, no traceback, never exits, then serves."""
    upstream = 6379 if backend == "redis" else 5432
    with fault_proxy("127.0.0.1", upstream) as proxy:
        proxy.mode = "drop"
        url, direct = _behind(proxy, backend)
        proc, log = _worker(url, tmp_path, "--queues", "ticks-none")
        try:
            wait_for(lambda: "waiting for its store" in log.read_text(), 20, "a first attempt")
            time.sleep(3.0)  # the outage the worker must sit through
            assert proc.poll() is None, log.read_text()
            text = log.read_text()
            # The start-up banner (logger "conveyor": the store, the queues, one probe) is a
            # fixed few lines; the outage may add one line per attempt, nothing else.
            lines = [line for line in text.splitlines() if " conveyor: " not in line]
            assert "Traceback" not in text, text
            attempts = [line for line in lines if "waiting for its store" in line]
            assert len(attempts) >= 2 and len(lines) <= 12, lines
            assert len(text.splitlines()) - len(lines) <= 8, text
            assert all(f"{proxy.url_netloc()}" in line and "unavailable" in line for line in attempts), (
                attempts
            )
            assert "serving" not in text
            proxy.mode = "pass"
            app = _e2e_app()
            app.close()
            app.url = direct
            try:
                job = app.enqueue_many([app.tasks["e2e_app.ok"].message(queue="ticks-none")])[0]
                wait_for(lambda: app.broker.get(job.id).state == "succeeded", 20, "the job to run")
            finally:
                app.close()
                _stop(proc)
                _drop(backend, direct)
        finally:
            _stop(proc)


def _e2e_app() -> Conveyor:
    sys.path.insert(0, str(HERE))
    try:
        import e2e_app
    finally:
        sys.path.remove(str(HERE))
    return e2e_app.app


def _drop(backend: str, url: str) -> None:
    """Remove what the test stored (a schema, or the keys of a prefix)."""
    if backend == "postgres":
        import psycopg

        schema = url.rsplit("schema=", 1)[1]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    else:
        from redis.client import Redis

        prefix = url.rsplit("prefix=", 1)[1]
        r = Redis(port=6379, db=10)
        keys = list(r.scan_iter(match=f"{prefix}:*"))
        if keys:
            r.delete(*keys)
        r.close()


@pytest.mark.parametrize("backend", ["redis-password", "postgres-database"])
def test_a_worker_refused_by_its_store_exits_at_once_with_one_line(
    backend: str, tmp_path: Path, protected_redis: int
) -> None:
    if backend == "redis-password":
        url = f"redis://:wrong-pw@127.0.0.1:{protected_redis}/0"
    else:
        url = POSTGRES_URL.rsplit("/", 1)[0] + "/no_such_db_conveyor"
    proc, log = _worker(url, tmp_path, "--processes", "2")
    try:
        code = proc.wait(15)
    finally:
        _stop(proc)
    text = log.read_text()
    assert code == CONFIG_ERROR, text
    assert "Traceback" not in text and len(text.splitlines()) <= 8, text
    assert "wrong-pw" not in text
    assert (
        ("password" in text.lower() or "auth" in text.lower()) if "redis" in backend else "no_such_db" in text
    )


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:{port}/0", "postgresql://postgres@127.0.0.1:{port}/test?connect_timeout=2"]
)
def test_status_on_a_down_store_is_one_line_and_fails(url: str) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "status", url.format(port=_closed_port())],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == "", proc.stderr + proc.stdout
    assert "unavailable" in proc.stderr.lower(), proc.stderr
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_a_serving_worker_rides_out_an_outage_with_one_line_per_failed_call(
    backend: str, tmp_path: Path
) -> None:
    """The store goes away for 3 s while the worker serves (the proxy resets every connection):
    every loop of the worker logs one line per failed call, no traceback, and serves again."""
    upstream = 6379 if backend == "redis" else 5432
    with fault_proxy("127.0.0.1", upstream) as proxy:
        url, direct = _behind(proxy, backend)
        proc, log = _worker(url, tmp_path, "--queues", "ticks-none")
        app = _e2e_app()
        app.close()
        app.url = direct
        try:
            for outage in (False, True):
                if outage:
                    before = len(log.read_text().splitlines())
                    proxy.mode = "drop"
                    time.sleep(3.0)
                    proxy.mode = "pass"
                    during = log.read_text().splitlines()[before:]
                    assert "Traceback" not in "\n".join(during), "\n".join(during)
                    assert 1 <= len(during) <= 30, during
                    # Each a one-line notice of the outage: a failed call, or the pool dropping
                    # a connection the server closed while it sat idle.
                    notices = ("unavailable", "discarding a connection")
                    unexplained = [
                        line
                        for line in during
                        if ("WARNING" in line or "ERROR" in line) and not any(n in line for n in notices)
                    ]
                    assert unexplained == [], during
                    print(f"{backend}: {len(during)} log lines over a 3 s outage")
                job = app.enqueue_many([app.tasks["e2e_app.ok"].message(queue="ticks-none")])[0]
                wait_for(lambda job=job: app.broker.get(job.id).state == "succeeded", 30, "the job to run")
            assert proc.poll() is None
        finally:
            app.close()
            _stop(proc)
            _drop(backend, direct)
