"""``conveyor queue pause|resume|paused`` and the pauses in ``conveyor status``, as a user runs them."""

from __future__ import annotations

import json

import pytest
from harness import Cluster

pytestmark = pytest.mark.slow


def test_pause_list_status_and_resume_from_the_command_line(sqlite_cluster: Cluster) -> None:
    cli = sqlite_cluster.cli
    assert cli("queue", "pause", "e2e_app:app", "default").stdout.strip() == "paused default"
    assert (
        "paused reports (task app.build)"
        in cli("queue", "pause", sqlite_cluster.url, "reports", "--task", "app.build").stdout
    )

    listed = [
        json.loads(line) for line in cli("queue", "paused", sqlite_cluster.url, "--json").stdout.splitlines()
    ]
    assert [(p["queue"], p["task"]) for p in listed] == [("default", None), ("reports", "app.build")]
    table = cli("queue", "paused", "e2e_app:app").stdout
    assert "(whole queue)" in table and "app.build" in table

    cli("enqueue", "e2e_app:app", "ok")
    status = cli("status", "e2e_app:app").stdout
    assert "default (paused)" in status
    assert "paused: default, reports (task app.build)" in status

    cli("queue", "resume", "e2e_app:app", "default")
    cli("queue", "resume", sqlite_cluster.url, "reports", "--task", "app.build")
    assert cli("queue", "paused", sqlite_cluster.url, "--json").stdout == ""
    assert "paused" not in cli("status", "e2e_app:app").stdout


def test_bad_names_are_refused_in_one_line(sqlite_cluster: Cluster) -> None:
    for args in (["bad queue"], ["default", "--task", "t" * 300]):
        proc = sqlite_cluster.cli("queue", "pause", sqlite_cluster.url, *args, check=False)
        assert proc.returncode != 0
        assert proc.stderr.startswith("Error: ConfigurationError: invalid")
        assert "Traceback" not in proc.stderr
    assert sqlite_cluster.app.paused() == []
