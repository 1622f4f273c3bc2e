"""docs/testing.md runs: its ``# file: NAME`` code blocks are written out as a user's project and
its tests run by pytest in another process, with the fixtures the installed package registers.
(They are fenced ``{.python notest}`` so the pages' own collector in conftest.py leaves them to
this test: they are files of a project, not snippets to run in order.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
BLOCK = re.compile(r"```\{\.python notest\}\n# file: (\S+)\n(.*?)```", re.DOTALL)


def test_the_pages_examples_pass(tmp_path: Path) -> None:
    files = BLOCK.findall(PAGE.read_text())
    assert {name for name, _ in files} >= {"tasks.py", "test_tasks.py", "test_memory_store.py"}
    for name, code in files:
        (tmp_path / name).write_text(code)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *(n for n, _ in files if n.startswith("test_")),
        ],
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout, done.stdout
    assert not (tmp_path / "conveyor.db").exists()  # every test ran on a memory store
