"""The store's clock decides: ``time()``, worker-registry expiry and its pruning.

A worker reports its own wall clock in ``WorkerInfo.last_beat``; nothing the registry decides may
depend on it, or a worker whose clock runs fast would outlive its death in the registry (or
erase the entries of the others), and one whose clock runs slow would never be listed.
"""

from __future__ import annotations

import time

from conveyor.brokers import Broker
from conveyor.records import WorkerInfo

DAY = 86400.0


def _worker(worker_id: str, clock: float) -> WorkerInfo:
    """A worker as it reports itself, ``last_beat`` read on its own (maybe skewed) clock."""
    return WorkerInfo(
        id=worker_id,
        host="h",
        pid=1,
        queues=["q"],
        concurrency=4,
        in_flight=0,
        started_at=clock - 10,
        last_beat=clock,
        counts={},
    )


def test_time_is_the_stores_clock(broker: Broker) -> None:
    before = time.time()
    first = broker.time()
    second = broker.time()
    after = time.time()

    # The test's stores run on this host, so their clock is this host's clock.
    assert before - 0.05 <= first <= second <= after + 0.05


def test_a_beat_expires_by_the_stores_clock_not_the_workers(broker: Broker) -> None:
    real = broker.time()
    broker.beat(_worker("fast", real + DAY), ttl=10)  # its clock runs a day ahead
    broker.beat(_worker("slow", real - 300), ttl=10)  # five minutes behind

    assert [w.id for w in broker.workers()] == ["fast", "slow"]
    assert [w.id for w in broker.workers(now=real + 5)] == ["fast", "slow"]
    assert broker.workers(now=real + 30) == []


def test_a_fast_workers_beat_does_not_erase_the_others(broker: Broker) -> None:
    real = broker.time()
    broker.beat(_worker("w1", real), ttl=10)
    broker.beat(_worker("fast", real + DAY), ttl=10)
    broker.beat(_worker("faster", real + 2 * DAY), ttl=10)

    assert [w.id for w in broker.workers()] == ["fast", "faster", "w1"]


def test_a_stopping_worker_leaves_at_once_whatever_its_clock(broker: Broker) -> None:
    real = broker.time()
    broker.beat(_worker("fast", real + DAY), ttl=10)
    broker.beat(_worker("fast", real + DAY), ttl=-1)

    assert broker.workers() == []
