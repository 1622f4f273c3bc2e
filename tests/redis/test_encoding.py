"""The lease index is a skiplist: as a listpack (any zset of up to 128 short members, which a
worker's leases are) every insert scans and parses the stored scores, ten times the cost."""

from __future__ import annotations

from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome


def enqueue(broker, n: int) -> None:
    broker.enqueue(
        [Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[[],{}]") for _ in range(n)]
    )


def test_the_lease_index_is_created_as_a_skiplist_and_holds_only_leases(open_redis, admin):
    broker = open_redis()
    running = f"{broker.target.prefix}:{{q}}:running"
    enqueue(broker, 10)
    batch = broker.reserve(["q"], 3, 60.0, "w1", Fairness((6, 3, 1)))
    assert admin.object("encoding", running) == b"skiplist"
    assert sorted(m.decode() for m in admin.zrange(running, 0, -1)) == sorted(d.id for d in batch)

    more = broker.reserve(["q"], 2, 60.0, "w1", Fairness((6, 3, 1)))
    assert admin.zcard(running) == 5
    broker.ack([Outcome(d.id, d.token, "succeeded") for d in batch + more])
    assert not admin.exists(running)


def test_a_listpack_lease_index_is_converted_on_the_next_reservation(open_redis, admin):
    """A store written before (or a zset Redis shrank) keeps working and gets the fast encoding."""
    broker = open_redis()
    running = f"{broker.target.prefix}:{{q}}:running"
    enqueue(broker, 4)
    first = broker.reserve(["q"], 2, 60.0, "w1", Fairness((6, 3, 1)))
    leases = admin.zrange(running, 0, -1, withscores=True)
    admin.delete(running)
    admin.zadd(running, dict(leases))  # as an older version left it
    assert admin.object("encoding", running) == b"listpack"

    second = broker.reserve(["q"], 2, 60.0, "w1", Fairness((6, 3, 1)))
    assert admin.object("encoding", running) == b"skiplist"
    assert sorted(m.decode() for m in admin.zrange(running, 0, -1)) == sorted(d.id for d in first + second)
