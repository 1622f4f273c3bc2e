"""Groups and limit keys of tenants gone idle are deleted by the expiry sweep (SQLite's tables)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome, Rule


def _count(broker: SQLiteBroker, table: str) -> int:
    return broker._db().execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_idle_groups_and_keys_are_forgotten(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/idle.db")
    t0 = 1_700_000_000.0
    base = Message(id="", task="t", queue="q", priority=1, payload=b"[[],{}]")
    messages = [
        msgspec.structs.replace(
            base, id=new_id(), limits=(Rule(key=f"tenant:{i}", rate=10.0, concurrency=1),)
        )
        for i in range(50)
    ]
    broker.enqueue(messages, now=t0)
    got = broker.reserve(["q"], 100, 30.0, "w", Fairness((6, 3, 1)), now=t0)
    assert len(got) == 50
    broker.ack([Outcome(d.id, d.token, "succeeded", result=b"null") for d in got], now=t0)
    broker.reserve(["q"], 100, 30.0, "w", Fairness((6, 3, 1)), now=t0 + 1)  # finds the groups empty
    assert _count(broker, "conveyor_groups") >= 50

    broker.expire(now=t0 + 10)

    assert _count(broker, "conveyor_groups") <= 1  # at most the jobs without limits' turn
    assert _count(broker, "conveyor_limits") == 0
    broker.close()
