"""The example alert rules refer only to metrics Conveyor exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from web_helpers import AUTH

from conveyor.metrics import StoreCollector
from conveyor.records import WorkerInfo

RULES = Path(__file__).resolve().parents[2] / "docs" / "alerts.yml"
PROMTOOL = shutil.which("promtool")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def test_alert_rules_use_exported_metrics(app) -> None:
    families = [*REGISTRY.collect(), *StoreCollector(lambda: app.broker, app.priorities).collect()]
    exported = {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}
    used = set(re.findall(r"\bconveyor_[a-z_]+", RULES.read_text()))
    assert {
        "conveyor_dead_letter_depth",
        "conveyor_start_delay_seconds_bucket",
        "conveyor_queue_workers",
    } <= used
    assert used <= exported, used - exported


def _worker(app, queues: list[str]) -> None:
    now = time.time()
    info = WorkerInfo(
        id=f"host:{len(queues)}", host="host", pid=1, queues=queues, concurrency=4, in_flight=0,
        started_at=now, last_beat=now, counts={},
    )  # fmt: skip
    app.broker.beat(info, 60.0)


def test_queue_workers_counts_the_live_workers_of_every_queue(app, serve, client) -> None:
    @app.task(queue="emails")
    def send() -> None: ...

    send.enqueue()
    _worker(app, ["email", "default"])
    _worker(app, ["default"])
    with serve(app) as url:
        text = client.get(url + "/metrics", headers=AUTH).text
    served = {
        s.labels["queue"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "conveyor_queue_workers"
    }
    assert served == {"emails": 0, "email": 1, "default": 2}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus, make system-deps)")
def test_unserved_queue_alert_fires_on_what_the_dashboard_exports(app, serve, client, tmp_path: Path) -> None:
    """The rule evaluated by Prometheus's own rule tester on series scraped from /metrics: ready
    jobs in `emails` while the live worker serves `email` (a typo) fire it for `emails` only."""

    @app.task(queue="emails")
    def send() -> None: ...

    @app.task(queue="email")
    def other() -> None: ...

    send.enqueue()
    send.enqueue()
    other.enqueue()
    _worker(app, ["email"])
    with serve(app) as url:
        text = client.get(url + "/metrics", headers=AUTH).text
    series = [
        {"series": _series(s.name, s.labels), "values": f"{s.value:g}x15"}
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("conveyor_")
    ]
    unserved = {
        "exp_labels": {"severity": "critical", "queue": "emails"},
        "exp_annotations": {
            "summary": "Jobs wait in emails and no live worker serves it",
            "description": "2 ready jobs in queue emails, and no live worker lists it in its --queues."
            " `conveyor status` shows the workers of each queue.",
        },
    }
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "ConveyorQueueUnserved", "exp_alerts": [unserved]},
                    {"eval_time": "10m", "alertname": "ConveyorNoWorkers", "exp_alerts": []},
                ],
            }
        ],
    }
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(json.dumps(tests))  # JSON is YAML
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _series(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"
