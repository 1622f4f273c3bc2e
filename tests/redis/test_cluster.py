"""The broker contract on a real Redis Cluster: three primaries started from ``redis-server``
on loopback ports, torn down after the module. Queues land in different slots and nodes.

The contract's own tests are collected here again with cluster fixtures; left out are those
that need SQL effects or caller transactions (SQL backends only) and the multi-process race,
which reopens its store through the contract suite's backend list.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from redis.client import Redis
from redis_servers import cluster

from conveyor.brokers.redis import RedisBroker
from conveyor.errors import ConfigurationError
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the ``contract`` package

CONTRACT = {
    "test_enqueue": None,
    "test_reserve": None,
    "test_priority": None,
    "test_outcomes": None,
    "test_leases": None,
    "test_dead_letter": None,
    "test_cancel": None,
    "test_stats": None,
    "test_expire": None,
    "test_listing": None,
    "test_wait": None,
    "test_queue_fairness": None,
    "test_unknown_levels": None,
    "test_effects": {
        "test_a_follow_up_job_is_created_with_the_ack",
        "test_no_follow_up_job_with_a_stale_token",
    },
    "test_concurrency": {"test_threads_claim_each_job_exactly_once"},
}
for _module_name, _chosen in CONTRACT.items():
    _module = importlib.import_module(f"contract.{_module_name}")
    globals().update(
        {
            name: test
            for name, test in vars(_module).items()
            if name.startswith("test_") and callable(test) and (_chosen is None or name in _chosen)
        }
    )

RETENTION = 3600.0


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    with cluster(tmp_path_factory.mktemp("cluster")) as servers:
        yield [s.port for s in servers]


@pytest.fixture
def store_url(nodes: list[int]) -> Iterator[str]:
    yield f"redis://127.0.0.1:{nodes[0]}?cluster=1&prefix=ct-{os.urandom(5).hex()}"
    for port in nodes:
        client = Redis(port=port)
        try:
            client.flushall()
        finally:
            client.close()


@pytest.fixture
def open_handle(store_url: str) -> Iterator[Callable[[], RedisBroker]]:
    opened: list[RedisBroker] = []

    def open_() -> RedisBroker:
        opened.append(RedisBroker(store_url, retention=RETENTION))
        return opened[-1]

    yield open_
    for broker in reversed(opened):
        broker.close()


@pytest.fixture
def broker(open_handle: Callable[[], RedisBroker]) -> RedisBroker:
    return open_handle()


@pytest.fixture
def t0() -> float:
    return time.time()


def test_queues_are_spread_over_the_primaries(broker, nodes):
    queues = [f"queue-{n}" for n in range(12)]
    broker.enqueue([Message(id=new_id(), task="t", queue=q, priority=0, payload=b"[]") for q in queues])

    holders = set()
    for port in nodes:
        client = Redis(port=port)
        try:
            if any(client.scan_iter(match=f"{broker.target.prefix}:{{queue-*}}:jobs")):
                holders.add(port)
        finally:
            client.close()
    assert holders == set(nodes)


def test_a_worker_round_across_queues_on_every_node(broker):
    queues = [f"queue-{n}" for n in range(6)]
    ids = [
        e.id
        for e in broker.enqueue(
            [
                Message(id=new_id(), task="t", queue=q, priority=1, payload=b"[]", max_attempts=2)
                for q in queues
                for _ in range(3)
            ]
        )
    ]
    fairness = Fairness((6, 3, 1))

    first = broker.reserve(queues, 100, 30.0, "w1", fairness)
    assert sorted(d.id for d in first) == sorted(ids)
    kinds = ["succeeded", "retry", "dead"]
    statuses = broker.ack(
        [Outcome(d.id, d.token, kinds[n % 3], error={"type": "E"}) for n, d in enumerate(first)]
    )
    assert {s.status for s in statuses} == {"ok"}
    retried = [d.id for n, d in enumerate(first) if n % 3 == 1]
    dead = [d.id for n, d in enumerate(first) if n % 3 == 2]

    again = broker.reserve(queues, 100, 30.0, "w1", fairness)
    assert sorted(d.id for d in again) == sorted(retried)
    assert {d.attempt for d in again} == {2}
    assert sorted(j.id for j in broker.dead(limit=100)) == sorted(dead)

    assert broker.replay(dead, queue="repair") == len(dead)
    assert sorted(d.id for d in broker.reserve(["repair"], 100, 30.0, "w1", fairness)) == sorted(dead)
    assert {broker.get(i).queue for i in dead} == {"repair"}
    assert sum(s.total("succeeded") for s in broker.stats()) == len(first) - len(retried) - len(dead)


def test_a_keyed_batch_across_slots_is_refused_whole(broker):
    """One script per hash slot cannot store a batch all or nothing across slots: a batch with
    keys must keep to one slot, and one that does not is refused before anything is stored."""
    spread = [Message(id=new_id(), task="t", queue=f"queue-{n}", priority=0, payload=b"[]") for n in range(6)]
    keyed = [msgspec.structs.replace(m, key="k") for m in spread]

    with pytest.raises(ConfigurationError, match="one hash slot"):
        broker.enqueue(keyed)

    assert [broker.get(m.id) for m in keyed] == [None] * len(keyed)
    assert all(e.created for e in broker.enqueue(spread))  # without keys: nothing can conflict
    one_slot = [msgspec.structs.replace(m, id=new_id(), queue="queue-0") for m in keyed[:2]]
    assert [e.created for e in broker.enqueue(one_slot)] == [True, False]
