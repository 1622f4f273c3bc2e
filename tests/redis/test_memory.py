"""Bounded memory: what a queued and a finished task cost in Redis, and that retention frees it."""

from __future__ import annotations

import msgspec
import pytest

from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome

TASKS = 10_000
#: The target is under 300 bytes per queued task with a small payload; the bound leaves room
#: for other Redis versions and allocators.
QUEUED_BOUND = 400
FINISHED_BOUND = 450


def used(admin, prefix: str) -> int:
    """Bytes of every key of the store, counted exactly (``MEMORY USAGE ... SAMPLES 0``)."""
    return sum(admin.memory_usage(key, samples=0) or 0 for key in admin.scan_iter(match=f"{prefix}:*"))


def test_bytes_per_queued_and_finished_task(open_redis, admin, capsys):
    broker = open_redis()
    prefix = broker.target.prefix
    messages = [
        Message(id=new_id(), task="send_email", queue="emails", priority=1, payload=b"[[42],{}]")
        for _ in range(TASKS)
    ]
    for start in range(0, TASKS, 1000):
        broker.enqueue(messages[start : start + 1000])
    queued = used(admin, prefix) / TASKS

    fairness = Fairness((6, 3, 1))
    while batch := broker.reserve(["emails"], 500, 60.0, "w1", fairness):
        assert {s.status for s in broker.ack([Outcome(d.id, d.token, "succeeded") for d in batch])} == {"ok"}
    finished = used(admin, prefix) / TASKS

    with capsys.disabled():
        print(f"\nRedis memory per task: queued {queued:.0f} B, finished (kept) {finished:.0f} B")
    assert queued < QUEUED_BOUND
    assert finished < FINISHED_BOUND


def stored(admin, broker, queue: str, job_id: str) -> list:
    raw = admin.hget(f"{broker.target.prefix}:{{{queue}}}:jobs", job_id)
    return msgspec.msgpack.decode(raw)


def test_a_queued_record_stores_its_enqueue_time_and_sequence_relative(open_redis, admin):
    """Absolute, the two fields would take 9 bytes each and push a small job's record (and every
    queued task) into jemalloc's next size class."""
    broker = open_redis()
    plain = Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[[],{}]")
    later = Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[[],{}]", delay=2.5)
    broker.enqueue([plain, later])  # on the store's clock, which also gives the sequence

    record = stored(admin, broker, "q", plain.id)
    assert record[4] is False  # the enqueue time is the due time
    assert abs(record[9]) < 2**31  # the sequence, relative to the enqueue time
    assert len(admin.hget(f"{broker.target.prefix}:{{q}}:jobs", plain.id)) <= 32

    first, second = broker.get(plain.id), broker.get(later.id)
    assert first.enqueued_at == first.run_at
    assert stored(admin, broker, "q", later.id)[4] == second.enqueued_at  # delayed: kept whole
    assert second.run_at - second.enqueued_at == pytest.approx(2.5)
    assert [j.id for j in broker.jobs("q")] == [later.id, plain.id]  # newest first, by sequence


def test_records_stored_with_absolute_fields_still_read_right(open_redis, admin):
    """Records written before the relative layout keep their meaning."""
    broker = open_redis()
    now = 1_800_000_000.5
    old, new = Message(id=new_id(), task="t", queue="q", priority=0, payload=b"[[1],{}]"), None
    broker.enqueue([old], now=now)
    record = stored(admin, broker, "q", old.id)
    record[4], record[9] = now, 1_800_000_000_500_000 + 77
    admin.hset(f"{broker.target.prefix}:{{q}}:jobs", old.id, msgspec.msgpack.encode(record))
    new = Message(id=new_id(), task="t", queue="q", priority=0, payload=b"[[2],{}]")
    broker.enqueue([new], now=now)

    assert broker.get(old.id).enqueued_at == now
    (delivery,) = broker.reserve(["q"], 1, 60.0, "w1", Fairness((6, 3, 1)), now=now + 1)
    assert delivery.id == old.id  # due at the same time as the newer job, and enqueued first
    assert delivery.enqueued_at == now


def test_retention_frees_finished_tasks_and_their_keys(open_redis, admin):
    broker = open_redis()
    prefix = broker.target.prefix
    messages = [
        Message(id=new_id(), task="t", queue="q", priority=0, payload=b"[[],{}]", key=f"k{n}")
        for n in range(500)
    ]
    broker.enqueue(messages, now=1000.0)
    while batch := broker.reserve(["q"], 100, 60.0, "w1", Fairness((6, 3, 1)), now=1000.0):
        broker.ack([Outcome(d.id, d.token, "succeeded", result=b"1") for d in batch], now=1001.0)
    assert broker.cancel(messages[0].id, now=1001.0) is False

    assert broker.expire(now=1001.0 + 3600.0 + 1, limit=10_000) == 500

    left = {key.decode() for key in admin.scan_iter(match=f"{prefix}:*")}
    assert left == {f"{prefix}:queues"}
