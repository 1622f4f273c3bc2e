"""``bench/wake_floor.py``: one wake-up through each store, timed by a real probe process."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from stores import POSTGRES_URL, REDIS_URL

pytestmark = pytest.mark.slow


def load_script() -> ModuleType:
    path = Path(__file__).parents[2] / "bench" / "wake_floor.py"
    spec = importlib.util.spec_from_file_location("wake_floor", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("store", ["sqlite", "postgresql", "redis"])
def test_every_wake_up_reaches_the_probe_and_the_claim_step_follows(store: str, tmp_path: Path) -> None:
    url = {"sqlite": f"sqlite:///{tmp_path}/floor.db", "postgresql": POSTGRES_URL, "redis": REDIS_URL}[store]
    hop, claim = load_script().wakes(url, samples=12, fifo=False)
    # Every message sent arrived (a lost or misread one leaves the probe short of 12), and the
    # claim step, timed from the same send, ended after the arrival.
    assert hop.samples == claim.samples == 12
    assert 0 <= hop.p50_ms <= claim.p50_ms and hop.max_ms <= claim.max_ms
