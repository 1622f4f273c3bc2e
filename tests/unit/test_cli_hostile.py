"""The CLI prints stored text as text (issue 26, findings 8, 9 and 13): markup, terminal escapes,
forged lines and absurd numbers cost one field its looks, never a listing or a command."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor import Conveyor
from conveyor.cli import main
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome

HOSTILE = "boom [/] [/bold]x [red]\x1b[2J\x1b]0;title\x07\nWARNING conveyor.worker forged line\u202eevil"


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/c.db"


def _dead_job(url: str, message: str, key: str) -> str:
    app = Conveyor(url)
    try:
        broker = app.broker
        broker.enqueue(
            [Message(id="j1", task="t[/]", queue="q[/]", priority=1, payload=b'[["a"], {}]', key=key)]
        )
        (delivery,) = broker.reserve(["q[/]"], 1, 30.0, "w", Fairness(app.priorities.weights))
        error = {
            "attempt": 1,
            "type": "Err[/]",
            "message": message,
            "traceback": message,
            "worker": "w\x1b[1m",
            "at": 1.0,
        }
        broker.ack([Outcome(delivery.id, delivery.token, "dead", error=error)])
    finally:
        app.close()
    return "j1"


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_listings_and_job_pages_print_hostile_text_as_text(store: str) -> None:
    job = _dead_job(store, HOSTILE, key="[/bold]x\x1b[31m")
    for args in (
        ("dead", "list", store),
        ("dead", "list", store, "--json"),
        ("job", store, job),
        ("dead", "show", store, job),
        ("status", store),
    ):
        out = _run(*args)
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, args
    for args in (("dead", "list", store), ("dead", "list", store, "--json")):
        assert "\nWARNING conveyor.worker forged line" not in _run(*args)
    shown = _run("job", store, job)
    assert "[/]" in shown and "[/bold]x" in shown and "\\x1b[2J" in shown
    (error_line,) = [line for line in shown.splitlines() if line.startswith("attempt 1")]
    assert error_line.endswith("\\nWARNING conveyor.worker forged line\\u202eevil")


def test_absurd_stored_times_are_shown_as_they_are(store: str) -> None:
    job = _dead_job(store, "x", key="k")
    db = sqlite3.connect(store.removeprefix("sqlite:///"))
    db.execute("UPDATE conveyor_jobs SET run_at = 1e308, finished_at = -1e18")
    db.commit()
    db.close()
    out = _run("job", store, job)
    assert "1e+308" in out and "-1e+18" in out
    _run("dead", "list", store)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--args", "[" + "1" * 5000 + "]"], "not usable JSON"),
        (["--args", "[" * 30_000 + "]" * 30_000], "not usable JSON"),
        (["--kwargs", '{"priority": 1}'], "--kwargs names priority"),
        (["--priority", "²"], "invalid priority '²'"),
        (["--args", json.dumps([2**64])], "outside the 64-bit range"),
    ],
)
def test_enqueue_refuses_bad_arguments_in_one_line(
    store: str, tmp_path: Path, monkeypatch, args, says
) -> None:
    (tmp_path / "cliapp.py").write_text(
        f"from conveyor import Conveyor\napp = Conveyor({store!r})\n@app.task\ndef f(*args, **kwargs): pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(main, ["enqueue", "cliapp:app", "f", *args])
    assert result.exit_code == 2 or result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert says in result.output
    assert "Traceback" not in result.output


def test_an_integer_too_long_to_print_is_a_serialization_error(store: str) -> None:
    from conveyor.errors import SerializationError

    app = Conveyor(store)

    @app.task
    def f(x: int) -> None: ...

    with pytest.raises(SerializationError, match="bits is outside the 64-bit range"):
        f.enqueue(10**5000)
    app.close()


def test_job_shows_headers_with_secret_ones_masked(store: str) -> None:
    app = Conveyor(store)

    @app.task(name="t")
    def t() -> None: ...

    try:
        job = t.enqueue(headers={"traceparent": "00-abc-01", "password": "hunter2", "x": "[red]\x1b[2J"})
    finally:
        app.close()
    out = _run("job", store, job.id)
    (line,) = [line for line in out.splitlines() if line.startswith("headers: ")]
    assert '"traceparent": "00-abc-01"' in line and "hunter2" not in line and '"password"' in line
    assert "\x1b" not in out and "[red]" in line
