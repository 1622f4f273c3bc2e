"""``wait_replicas``: an enqueue returns once that many replicas have it, or says they did not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_servers import Server, server

from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis.url import parse
from conveyor.errors import ConfigurationError, NotReplicated
from conveyor.ids import new_id
from conveyor.records import Message


def test_the_options_are_ours_and_checked():
    target = parse("redis://h:1/0?wait_replicas=2&wait_timeout=50&socket_timeout=3")
    assert (target.wait, target.url) == ((2, 50), "redis://h:1/0?socket_timeout=3")
    assert parse("redis://h:1/0?wait_replicas=1").wait == (1, 1000)
    assert parse("redis://h:1/0").wait is None
    for bad in ("wait_replicas=x", "wait_replicas=1&wait_timeout=0", "wait_timeout=10", "wait_replicas=-1"):
        with pytest.raises(ConfigurationError):
            parse(f"redis://h:1/0?{bad}")


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    with (
        server(tmp_path / "primary", "--repl-diskless-sync-delay", "0") as primary,
        server(tmp_path / "replica") as replica,
    ):
        admin = replica.client()
        try:
            admin.replicaof("127.0.0.1", primary.port)
            while admin.info("replication").get("master_link_status") != "up":
                admin.ping()
        finally:
            admin.close()
        yield primary, replica


def message() -> Message:
    return Message(id=new_id(), task="t", queue="q", priority=0, payload=b"[]")


def test_an_enqueue_returns_once_the_replica_has_it(primary_and_replica):
    primary, replica = primary_and_replica
    broker = RedisBroker(f"redis://127.0.0.1:{primary.port}/0?prefix=w&wait_replicas=1&wait_timeout=5000")
    reader = replica.client()
    try:
        for _ in range(20):
            m = message()
            broker.enqueue([m])
            assert reader.hexists("w:{q}:jobs", m.id)  # on the replica when enqueue returned

        replica.kill()
        impatient = RedisBroker(
            f"redis://127.0.0.1:{primary.port}/0?prefix=w&wait_replicas=1&wait_timeout=100"
        )
        m = message()
        with pytest.raises(NotReplicated, match=r"0 of the 1 replicas asked for .* within 100 ms"):
            impatient.enqueue([m])
        assert impatient.get(m.id) is not None  # stored on the primary all the same
        impatient.close()
    finally:
        reader.close()
        broker.close()
