"""Type checkers see a task's signature: mypy --strict and pyright report every deliberate
mistake of tests/typecheck/mistakes.py (on the line after its ``# expect:`` comment, with its
code) and nothing else, and nothing in tests/typecheck/correct.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "typecheck"
ROOT = HERE.parents[1]
CORRECT = HERE / "correct.py"
MISTAKES = HERE / "mistakes.py"
PYRIGHT = Path(sys.executable).parent / "pyright"
_EXPECT = re.compile(r"^\s*#\s*expect:(.*)$")
_CODES = re.compile(r"(mypy|pyright)\[([^\]]+)\]")


def expected(tool: str) -> set[tuple[int, str]]:
    """(line, code) of every error the file's ``# expect:`` comments name for ``tool``: each
    names the errors of the line after it."""
    out = set()
    for number, line in enumerate(MISTAKES.read_text().splitlines(), start=1):
        mark = _EXPECT.search(line)
        if mark:
            for name, codes in _CODES.findall(mark.group(1)):
                if name == tool:
                    out.update((number + 1, code) for code in codes.split(","))
    return out


def test_the_mistakes_file_marks_each_kind_of_mistake() -> None:
    lines = MISTAKES.read_text()
    assert len(expected("mypy")) >= 15
    for kind in ("enqueue(123)", "subjet=", 'delay="soon"', "delay=5)", ".result()"):
        assert kind in lines


def run_mypy(path: Path, tmp_path: Path) -> tuple[set[tuple[int, str]], str]:
    done = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes",
            "--cache-dir", str(tmp_path / "mypy-cache"), str(path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    found = set()
    for line in done.stdout.splitlines():
        m = re.match(rf"^{re.escape(str(path.relative_to(ROOT)))}:(\d+): error: .*\[([a-z-]+)\]$", line)
        if m:
            found.add((int(m.group(1)), m.group(2)))
    return found, done.stdout + done.stderr


def test_mypy_reports_each_mistake(tmp_path: Path) -> None:
    found, output = run_mypy(MISTAKES, tmp_path)
    assert found == expected("mypy"), output


def test_mypy_passes_correct_uses(tmp_path: Path) -> None:
    found, output = run_mypy(CORRECT, tmp_path)
    assert found == set(), output
    assert "error" not in output, output


def run_pyright(path: Path) -> tuple[set[tuple[int, str]], str]:
    if not PYRIGHT.exists():
        pytest.skip("pyright is not installed (pip install -e '.[dev]')")
    done = subprocess.run(
        [str(PYRIGHT), "--outputjson", "--pythonpath", sys.executable, str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    start = done.stdout.find("{")
    assert start >= 0, done.stdout + done.stderr
    report = json.loads(done.stdout[start:])
    found = {
        (d["range"]["start"]["line"] + 1, d.get("rule", "?"))
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    }
    return found, json.dumps(report["generalDiagnostics"], indent=1)


def test_pyright_reports_each_mistake() -> None:
    found, output = run_pyright(MISTAKES)
    assert found == expected("pyright"), output


def test_pyright_passes_correct_uses() -> None:
    found, output = run_pyright(CORRECT)
    assert found == set(), output
