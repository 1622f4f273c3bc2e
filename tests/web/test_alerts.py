"""The example alert rules refer only to metrics Conveyor exports."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY

from conveyor.metrics import StoreCollector

RULES = Path(__file__).resolve().parents[2] / "docs" / "alerts.yml"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def test_alert_rules_use_exported_metrics(app) -> None:
    families = [*REGISTRY.collect(), *StoreCollector(lambda: app.broker, app.priorities).collect()]
    exported = {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}
    used = set(re.findall(r"\bconveyor_[a-z_]+", RULES.read_text()))
    assert {"conveyor_dead_letter_depth", "conveyor_start_delay_seconds_bucket"} <= used
    assert used <= exported, used - exported
