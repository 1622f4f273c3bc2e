"""Encodings chosen for speed. The lease index is a skiplist: as a listpack (any zset of up to
128 short members, which a worker's leases are) every insert scans and parses the stored scores,
ten times the cost. Enqueue concatenates records from pre-packed pieces, which must give the
bytes the general packer would."""

from __future__ import annotations

from conveyor.brokers.redis.scripts import _read
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


def test_enqueue_writes_each_record_as_pack_record_would(open_redis, admin):
    """enqueue builds records by concatenating pieces packed once per batch; every shape of
    message must come out as the bytes the general packer gives (which every script reads)."""
    broker = open_redis()
    jobs = f"{broker.target.prefix}:{{q}}:jobs"
    canonical = _read("lib") + "\nreturn pack_record(unpack_record(ARGV[1]))"
    # The pending member named by the record's sequence, which reserve and cancel remove.
    member = _read("lib") + "\nreturn member(ARGV[2], unpack_record(ARGV[1])[R_SEQ])"

    def message(n: int, **fields) -> Message:
        fields.setdefault("payload", f"[[{n}],{{}}]".encode())
        return Message(id=new_id(), task=f"t{n % 2}", queue="q", **fields)

    for now in (None, 1_700_000_000.25, 12.5):  # the store's clock; a caller's; one far from it
        batch = [
            message(1, priority=0),
            message(2, priority=2, delay=2.5),
            message(3, priority=1, run_at=1_900_000_000.125),
            message(4, priority=1, key=f"k-{new_id()}"),
            message(5, priority=0, key=f"k-{new_id()}", delay=1.0, max_attempts=9),
            message(6, priority=1, run_at=1.0),
            message(7, priority=0, payload=b"\x00\xff not utf-8"),
        ]
        assert all(e.created for e in broker.enqueue(batch, now=now))
        for m in batch:
            raw = admin.hget(jobs, m.id)
            assert raw == admin.eval(canonical, 0, raw), m
            pending = f"{broker.target.prefix}:{{q}}:pending:{m.priority}"
            assert admin.zscore(pending, admin.eval(member, 0, raw, m.id)) is not None, m
            info = broker.get(m.id)
            stored = (info.task, info.priority, info.payload, info.key, info.max_attempts)
            assert stored == (m.task, m.priority, m.payload, m.key, m.max_attempts)


def test_reserve_reads_every_field_back_from_the_stored_record(open_redis):
    """A leased job's fields come back as enqueued: payloads of every MessagePack str size class
    (the record stores them as Lua strings), any bytes, and the enqueue time the record keeps
    relative to the due time."""
    broker = open_redis()
    sizes = (0, 1, 31, 32, 255, 256, 65_535, 65_536)
    batch = [
        Message(id=new_id(), task=f"t{n}", queue="q", priority=n % 3, payload=bytes([n % 251]) * n)
        for n in sizes
    ]
    batch.append(Message(id=new_id(), task="t", queue="q", priority=0, payload=b"\xff\x00", key="k-1"))
    delayed = Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[]", delay=5.0, max_attempts=7)
    now = 1_700_000_000.5
    broker.enqueue([*batch, delayed], now=now)
    leased = broker.reserve(["q"], 100, 60.0, "w1", Fairness((6, 3, 1)), now=now)
    assert sorted(d.id for d in leased) == sorted(m.id for m in batch)
    by_id = {d.id: d for d in leased}
    for m in batch:
        d = by_id[m.id]
        assert (d.task, d.priority, d.payload, d.key, d.max_attempts) == (
            m.task,
            m.priority,
            m.payload,
            m.key,
            m.max_attempts,
        )
        assert (d.attempt, d.run_at, d.enqueued_at, d.queue) == (1, now, now, "q")

    (late,) = broker.reserve(["q"], 100, 60.0, "w1", Fairness((6, 3, 1)), now=now + 6)
    assert (late.id, late.run_at, late.enqueued_at, late.max_attempts) == (delayed.id, now + 5, now, 7)
    assert late.token > 0
