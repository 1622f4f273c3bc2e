"""Conveyor(max_queued=): the setting is checked when the app is made; QueueFull says what it
refused; the cap is a gauge beside the store's, and refusals a counter in the producer."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor, QueueFull
from conveyor.errors import ConfigurationError, ConveyorError
from conveyor.metrics import StoreCollector


@pytest.mark.parametrize(
    "bad",
    [{"reports": -1}, {"reports": 1.5}, {"reports": True}, {"a b": 10}, {"": 1}, [("reports", 1)]],
)
def test_a_bad_setting_is_refused_when_the_app_is_made(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"max_queued|queue name"):
        Conveyor("sqlite:///x.db", max_queued=bad)  # type: ignore[arg-type]


def test_queue_full_names_the_queue_its_count_and_its_cap() -> None:
    exc = QueueFull("reports", 10_000, 10_000, 3)
    assert isinstance(exc, ConveyorError)
    assert str(exc) == (
        "queue 'reports' is full: 10000 jobs ready or scheduled, max_queued 10000;"
        " refused a batch adding 3 (nothing of it was stored)"
    )
    again = pickle.loads(pickle.dumps(exc))  # crosses process boundaries intact
    assert (again.queue, again.queued, again.cap, again.adding) == ("reports", 10_000, 10_000, 3)


def test_the_producer_counts_refused_messages_and_the_collector_serves_the_caps(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/c.db", max_queued={"capped": 1, "other": 5})

    @app.task(queue="capped")
    def t(n: int) -> None: ...

    before = REGISTRY.get_sample_value("conveyor_enqueue_refused_total", {"queue": "capped"}) or 0.0
    t.enqueue(1)
    with pytest.raises(QueueFull):
        app.enqueue_many([t.message(2), t.message(3), t.message(4, queue="other")])
    after = REGISTRY.get_sample_value("conveyor_enqueue_refused_total", {"queue": "capped"})
    assert after == before + 2  # the messages of the full queue

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(lambda: app.broker, app.priorities, app.max_queued))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    caps = {s.labels["queue"]: s.value for s in families["conveyor_queue_max_queued"].samples}
    assert caps == {"capped": 1.0, "other": 5.0}
    app.close()
