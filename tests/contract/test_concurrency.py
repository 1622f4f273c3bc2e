"""Racing claimers: every job is claimed exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from .helpers import make_message, total
from .race_worker import claim_all

JOBS = 2000
TESTS_DIR = Path(__file__).resolve().parents[1]


def fill(broker) -> list[str]:
    messages = [make_message() for _ in range(JOBS)]
    for start in range(0, JOBS, 500):
        broker.enqueue(messages[start : start + 500])
    return [m.id for m in messages]


def assert_each_claimed_once(broker, ids: list[str], claims: list[list[str]]) -> None:
    counted = Counter(i for claimed in claims for i in claimed)
    assert [i for i, n in counted.items() if n > 1] == []
    assert set(counted) == set(ids)
    assert total(broker, "q", "succeeded", now=None) == JOBS


def test_threads_claim_each_job_exactly_once(broker):
    ids = fill(broker)
    claims: list[list[str]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run(n: int) -> None:
        try:
            start.wait()
            claims[n] = claim_all(broker, f"thread-{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert errors == []
    assert_each_claimed_once(broker, ids, claims)


def test_processes_claim_each_job_exactly_once(backend, store_url, broker):
    if not backend.processes:
        pytest.skip(f"{backend.name}: a store in the test process's memory, no other process opens it")
    ids = fill(broker)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "contract.race_worker", backend.name, store_url, f"proc-{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        for p in procs:  # start all claimers together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    assert [p.returncode for p in procs] == [0, 0, 0]
    claims = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert_each_claimed_once(broker, ids, claims)
