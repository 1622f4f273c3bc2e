"""A reservation from one queue splits over the jobs this claimer can have: jobs another claimer
holds locked (mid-reservation) neither count nor take a share. (From several queues the reserve
function counts without locks, so they still count there.)"""

from __future__ import annotations

import psycopg

from conveyor.brokers.postgres import PostgresBroker
from conveyor.brokers.postgres.dsn import parse
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message


def messages(priority: int, n: int) -> list[Message]:
    return [
        Message(id=new_id(), task="t", queue="q", priority=priority, payload=b"[[],{}]") for _ in range(n)
    ]


def test_jobs_locked_by_another_claimer_take_no_share_of_the_reservation(store_url: str) -> None:
    broker = PostgresBroker(store_url)
    try:
        broker.enqueue(messages(0, 20))
        broker.enqueue(messages(2, 5))
        target = parse(store_url)
        with psycopg.connect(target.conninfo) as other:
            # Another claimer is mid-reservation: it holds every low job locked.
            held = other.execute(
                f"SELECT id FROM {target.ident}.jobs WHERE priority = 2 FOR UPDATE"
            ).fetchall()
            assert len(held) == 5
            got = broker.reserve(["q"], 10, 30.0, "w", Fairness((6, 3, 1)))
            other.rollback()
        # The low level had no job this claimer could take, so the high level had the whole
        # reservation (counting the held low jobs would have given them a share, left empty).
        assert [d.priority for d in got] == [0] * 10
        again = broker.reserve(["q"], 30, 30.0, "w", Fairness((6, 3, 1)))
        assert sorted(d.priority for d in again) == [0] * 10 + [2] * 5  # unlocked, all claimable
    finally:
        broker.close()
