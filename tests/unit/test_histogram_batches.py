"""The worker's batched histogram updates give exactly what one observe per value gives."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from conveyor.metrics import DELAY_BUCKETS, observe_many


def test_observe_many_matches_observe_one_by_one() -> None:
    rng = random.Random(5)
    values = [0.0, 0.001, 0.0025, 300.0, 1e9] + [rng.expovariate(20) for _ in range(500)]
    expositions = []
    for batched in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("d", "delay", ["queue"], buckets=DELAY_BUCKETS, registry=registry)
        child = histogram.labels("q")
        if batched:
            observe_many(child, values[:100])
            observe_many(child, values[100:])
        else:
            for v in values:
                child.observe(v)
        samples = {(s.name, s.labels.get("le")): s.value for m in registry.collect() for s in m.samples}
        expositions.append({k: v for k, v in samples.items() if not k[0].endswith("_created")})
    one_by_one, batched_ = expositions
    assert one_by_one.pop(("d_sum", None)) == pytest.approx(batched_.pop(("d_sum", None)), rel=1e-12)
    assert one_by_one == batched_
