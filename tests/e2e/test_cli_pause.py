"""``conveyor queue pause|resume|paused`` and the pauses in ``conveyor status``, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from harness import Cluster
from redis_servers import free_port

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


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0?socket_connect_timeout=2",
        "postgresql://postgres@127.0.0.1:{port}/test?connect_timeout=2",
    ],
)
@pytest.mark.parametrize("command", ["pause", "resume", "paused"])
def test_a_down_store_is_one_line(url: str, command: str) -> None:
    args = ["queue", command, url.format(port=free_port()), *(["default"] if command != "paused" else [])]
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", *args], check=False, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == "", proc.stderr + proc.stdout
    assert "StoreUnavailable" in proc.stderr, proc.stderr
