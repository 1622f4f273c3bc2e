"""`conveyor limits list|set|clear` against a store URL."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from conveyor import Conveyor
from conveyor.cli import main


def test_set_list_and_clear_a_run_time_limit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    run = CliRunner().invoke

    r = run(main, ["limits", "set", url, "reports", "--concurrency", "2"])
    assert r.exit_code == 0, r.output
    r = run(main, ["limits", "set", url, "reports", "tenant:9", "--rate", "30/m", "--burst", "3"])
    assert r.exit_code == 0, r.output

    r = run(main, ["limits", "list", url, "--json"])
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert [(x["key"], x["rate"], x["burst"], x["concurrency"]) for x in rows] == [
        ("", 0.0, 1, 2),
        ("tenant:9", 0.5, 3, 0),
    ]
    r = run(main, ["limits", "list", url])
    assert "(queue)" in r.output and "tenant:9" in r.output and "run time" in r.output

    assert run(main, ["limits", "clear", url, "reports", "tenant:9"]).exit_code == 0
    again = run(main, ["limits", "clear", url, "reports", "tenant:9"])
    assert again.exit_code == 1 and "no run-time limit" in again.output
    assert [i.key for i in Conveyor(url).limits()] == [""]


def test_bad_limits_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    run = CliRunner().invoke
    for args, message in [
        (["--rate", "lots"], "rate 'lots'"),
        (["--concurrency", "0"], "concurrency must be an int from 1"),
        (["--burst", "5"], "a burst needs a rate"),
        ([], "give a rate, a concurrency, or both"),
    ]:
        r = run(main, ["limits", "set", url, "q", *args])
        assert r.exit_code == 1 and message in r.output, (args, r.output)
    assert Conveyor(url).limits() == []
