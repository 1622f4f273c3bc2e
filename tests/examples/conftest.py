"""Fixtures of the examples' tests: a fresh PostgreSQL schema, real processes and their logs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from example_processes import POSTGRES_URL


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema of the test database, dropped with everything in it at teardown."""
    import psycopg

    schema = f"example_{os.urandom(5).hex()}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``run(cwd, env, *argv)``: a process of this Python, stopped at teardown; its output goes to
    a log file, printed at teardown (shown if the test fails)."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(cwd: Path, env: dict[str, str], *argv: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"proc-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *argv], cwd=cwd, env=os.environ | env, stdout=out, stderr=subprocess.STDOUT
            )
        started.append((proc, log))
        return proc

    yield start
    for proc, _ in started:
        proc.terminate()
    for proc, log in started:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sys.stdout.write(f"--- {' '.join(map(str, proc.args))} ---\n{log.read_text()}\n")
