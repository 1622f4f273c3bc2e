"""`conveyor dead replay` with ids that are not dead, and `conveyor status` in a narrow terminal,
against a real SQLite store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from conveyor import Conveyor, RetryPolicy, cli
from conveyor.cli import main
from conveyor.priority import Fairness
from conveyor.records import Outcome


def bury_one(app: Conveyor, queue: str = "default") -> str:
    [d] = app.broker.reserve([queue], 1, 30.0, "w", Fairness(app.priorities.weights))
    error = {"attempt": 1, "type": "ValueError", "message": "x", "traceback": None, "worker": "w", "at": 0.0}
    assert app.broker.ack([Outcome(d.id, d.token, "dead", error=error)])[0].status == "ok"
    return d.id


def test_replay_names_the_ids_not_in_the_dead_letter_queue_and_fails(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/c.db")

    @app.task(retry=RetryPolicy(max_attempts=1))
    def t(n: int) -> None: ...

    t.enqueue(1)
    dead = bury_one(app)
    pending = t.enqueue(2).id
    r = CliRunner().invoke(main, ["dead", "replay", app.url, dead, "NOTANID", pending])
    assert r.exit_code == 1
    assert "replayed 1 job(s)" in r.output
    assert "not in the dead letter queue (no such job, or not dead): NOTANID, " + pending in r.output
    assert app.job(dead).status() == "ready"

    r = CliRunner().invoke(main, ["dead", "replay", app.url, "NOTANID"])
    assert r.exit_code == 1 and "replayed 0 job(s)" in r.output and "NOTANID" in r.output
    app.close()


@pytest.mark.parametrize("width", [80, 100, 200])
def test_status_folds_long_queue_names_instead_of_cutting_them(
    tmp_path: Path, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "emails.transactional.receipts-eu-west-1.with-a-long-tail"
    app = Conveyor(f"sqlite:///{tmp_path}/c.db")

    @app.task(queue=name)
    def t() -> None: ...

    t.enqueue()
    t.enqueue(priority="low", delay=600)
    monkeypatch.setattr(cli, "console", Console(width=width, force_terminal=False))
    r = CliRunner().invoke(main, ["status", app.url])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in r.output
    # The first column of the body rows, read down, spells the whole name.
    body = [line for line in lines if re.search(r"\b(normal|low)\b|^\W*[\w.-]+\W*$", line)]
    column = "".join(
        re.split(r"\s{2,}|│", line.strip(" │┃"))[0].strip() for line in body if line.strip(" │┃")
    )
    assert name in column, r.output
    assert re.search(r"normal\s.*\b1\b", r.output) and re.search(r"low\s.*\b1\b", r.output)
    app.close()
