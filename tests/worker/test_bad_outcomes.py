"""One bad outcome does not stall a worker, on every backend.

- A return value over ``max_result`` fails its attempt (dead, ResultTooLarge) and never reaches
  the store; the other outcomes of the worker land.
- An outcome the store refuses on its own (here an error message that cannot be stored: a
  lone surrogate, as a file name decoded with ``os.fsdecode`` gives, which no store's encoding
  takes) is retried a few times, then recorded as an attempt failed with AckRefused; the others
  land meanwhile.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from backend_stores import NAMES, fresh_app
from waiting import wait_for

from conveyor import Conveyor, RetryPolicy
from conveyor.errors import ConfigurationError

ONCE = RetryPolicy(max_attempts=1)


@pytest.mark.parametrize("name", NAMES)
def test_an_oversized_result_fails_its_attempt_and_the_others_land(
    name: str, tmp_path: Path, run_worker: Any
) -> None:
    with fresh_app(name, tmp_path, max_result=4096) as app:

        @app.task(retry=ONCE)
        def big(n: int) -> str:
            return "x" * n

        @app.task(retry=ONCE, max_result=1 << 20)
        def allowed_big(n: int) -> str:
            return "x" * n

        @app.task
        def small(n: int) -> int:
            return n

        with run_worker(app, concurrency=8, idle_wait=0.1):
            jobs = [big.enqueue(10_000), allowed_big.enqueue(10_000), *(small.enqueue(n) for n in range(6))]
            wait_for(lambda: all(j.status() in ("succeeded", "dead") for j in jobs), what="every outcome")
        info = jobs[0].info()
        assert info.state == "dead" and info.result is None
        assert [e["type"] for e in info.errors] == ["ResultTooLarge"]
        assert "encodes to 10002 bytes, over the limit of 4096" in info.errors[0]["message"]
        assert jobs[1].result(timeout=5) == "x" * 10_000
        assert [j.result(timeout=5) for j in jobs[2:]] == list(range(6))


@pytest.mark.parametrize("name", NAMES)
def test_an_outcome_the_store_refuses_does_not_hold_back_the_others(
    name: str, tmp_path: Path, run_worker: Any
) -> None:
    with fresh_app(name, tmp_path) as app:

        @app.task(retry=ONCE)
        def unstorable() -> None:
            raise FileNotFoundError("no file named " + os.fsdecode(b"/tmp/\xff"))

        @app.task
        def small(n: int) -> int:
            return n

        with run_worker(app, concurrency=4, idle_wait=0.1) as worker:
            bad = unstorable.enqueue()
            good = [small.enqueue(n) for n in range(8)]
            assert [j.result(timeout=20) for j in good] == list(range(8))
            wait_for(lambda: bad.status() == "dead", what="the refused outcome's attempt to fail")
            assert small.enqueue(99).result(timeout=20) == 99  # still serving
            wait_for(lambda: not worker.leases, what="every lease settled")
        (error,) = bad.info().errors
        assert error["type"] == "AckRefused"
        assert "the store refused" in error["message"]


def test_max_result_must_be_a_positive_number_of_bytes(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="max_result"):
        Conveyor(f"sqlite:///{tmp_path}/c.db", max_result=0)
    app = Conveyor(f"sqlite:///{tmp_path}/c.db")
    with pytest.raises(ConfigurationError, match="max_result"):
        app.task(max_result=-1)(lambda: None)
    assert "<lambda>" not in " ".join(app.tasks)
