"""`conveyor demo`: its deliberate failures do not flood the terminal (the workers log at ERROR,
through the demo's console), and its closing hint is a command that runs outside the virtualenv."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_demo_is_quiet_about_expected_retries_and_its_hint_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONVEYOR_URL")}
    env["PATH"] = "/usr/bin:/bin"  # a shell that has not activated the virtualenv
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "demo", "--tasks", "300", "--db", str(tmp_path / "demo.db")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "summary" in out
    assert "retry in" not in out + proc.stderr  # no retry warning per flaky attempt
    assert "attempt" not in proc.stderr
    (hint,) = [line for line in out.splitlines() if line.startswith("inspect the dead letter queue: ")]
    command = shlex.split(hint.removeprefix("inspect the dead letter queue: "))
    assert command[0] != "conveyor"  # not on this PATH
    listed = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, cwd="/", env=env
    )
    assert listed.returncode == 0, listed.stderr
    assert "parse_feed" in listed.stdout
