"""A stored job record that does not unpack, or unpacks to the wrong shape or field types, costs
that record only (issue 26, finding 2): every script that loads records copes with it, none
fails for the other jobs of its batch, and every listing still answers.

The record is overwritten in the store's jobs hash, as an attacker or a bug with write access
could: garbage bytes, the record cut in half, MessagePack that is not an array, and an array
with a field of the wrong type. A reservation buries such a record in place (dead, with a
CorruptRecord error, its bytes kept as the payload), counts moved with it, and leases the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from conveyor import Conveyor
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis.url import parse
from conveyor.brokers.redis.wire import CORRUPT_TASK
from conveyor.cli import main
from conveyor.errors import KeyConflict
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome

WEIGHTS = (6, 3, 1)
T0 = 1_800_000_000.0


def _wrong(field: int, value: Any) -> Callable[[bytes], bytes]:
    def rewrite(record: bytes) -> bytes:
        fields = msgspec.msgpack.decode(record)
        fields[field - 1] = value
        return msgspec.msgpack.encode(fields)

    return rewrite


#: Ways to spoil a stored record, by name: each takes the record's bytes and returns new ones.
SPOILS: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda record: b"\xc1\xc1 not MessagePack \xff\x00",
    "empty": lambda record: b"",
    "truncated": lambda record: record[: len(record) // 2],
    "a-map": lambda record: msgspec.msgpack.encode({"task": "t", "priority": 1}),
    "a-number": lambda record: msgspec.msgpack.encode(7),
    "short-array": lambda record: msgspec.msgpack.encode(["t", 1]),
    "task-a-number": _wrong(1, 5),
    "priority-a-string": _wrong(2, "1"),
    "priority-fractional": _wrong(2, 1.5),
    "payload-a-number": _wrong(3, 7),
    "run-at-a-string": _wrong(4, "soon"),
    "run-at-nan": _wrong(4, math.nan),
    "attempt-a-string": _wrong(6, "0"),
    "token-a-table": _wrong(8, [1]),
    "state-unknown": _wrong(9, "z"),
    "sequence-a-string": _wrong(10, "s"),
}


@pytest.fixture
def broker(open_redis: Callable[..., RedisBroker]) -> RedisBroker:
    return open_redis()


@pytest.fixture(params=sorted(SPOILS))
def spoil(request: pytest.FixtureRequest) -> Callable[[bytes], bytes]:
    return SPOILS[request.param]


@pytest.fixture
def corrupt(admin: Any, store_url: str) -> Iterator[Callable[..., None]]:
    """``corrupt(job_id, spoil, queue="q")``: overwrite a job's stored record."""

    def rewrite(job_id: str, how: Callable[[bytes], bytes], queue: str = "q") -> None:
        key = f"{parse(store_url).prefix}:{{{queue}}}:jobs"
        record = admin.hget(key, job_id)
        assert record is not None
        admin.hset(key, job_id, how(record))

    yield rewrite


def _messages(n: int, queue: str = "q", **fields: Any) -> list[Message]:
    return [
        Message(id=new_id(), task="t", queue=queue, priority=1, payload=b"[[%d],{}]" % i, **fields)
        for i in range(n)
    ]


def _counts(broker: RedisBroker, queue: str = "q", now: float = T0) -> dict[str, dict[int, int]]:
    (stats,) = broker.stats([queue], now=now)
    return {state: dict(levels) for state, levels in stats.counts.items() if any(levels.values())}


def _reserve(broker: RedisBroker, limit: int = 10, now: float = T0, lease: float = 30.0) -> list[Any]:
    return broker.reserve(["q"], limit, lease, "w1", Fairness(WEIGHTS), now=now)


def _listings_answer(broker: RedisBroker, bad: str, now: float) -> None:
    """Every read that shows jobs answers, and shows the bad one as a corrupt record."""
    shown = broker.get(bad, now=now)
    assert shown is not None and shown.id == bad
    for state in (None, "ready", "scheduled", "running", "dead", "succeeded", "cancelled"):
        broker.jobs(state=state, now=now)
        broker.jobs(state=state, task="t", now=now)
    assert bad in [j.id for j in broker.jobs(now=now)]
    broker.dead()
    broker.stats(now=now)


def test_reserve_buries_the_bad_record_and_leases_the_rest_of_its_batch(
    broker: RedisBroker, corrupt: Callable[..., None], spoil: Callable[[bytes], bytes]
) -> None:
    batch = _messages(6)
    broker.enqueue(batch, now=T0)
    bad = batch[2].id
    corrupt(bad, spoil)

    leased = _reserve(broker)

    assert sorted(d.id for d in leased) == sorted(m.id for m in batch if m.id != bad)
    assert _counts(broker) == {"running": {1: 5}, "dead": {1: 1}}
    (dead,) = broker.dead()
    assert dead.id == bad and dead.state == "dead" and dead.task == CORRUPT_TASK
    assert dead.errors[-1]["type"] == "CorruptRecord"
    assert _reserve(broker, now=T0 + 1) == []  # nothing left pending, nothing leased twice
    _listings_answer(broker, bad, T0 + 1)
    # The buried record is an ordinary dead job now: it can be purged, and counts follow.
    assert broker.purge([bad]) == 1
    assert _counts(broker) == {"running": {1: 5}}


def test_reserve_of_a_spoiled_record_alone_leases_nothing_and_errors_nothing(
    broker: RedisBroker, corrupt: Callable[..., None]
) -> None:
    (m,) = _messages(1)
    broker.enqueue([m], now=T0)
    corrupt(m.id, SPOILS["garbage"])
    assert _reserve(broker) == []
    assert _counts(broker) == {"dead": {1: 1}}


def test_reclaim_buries_a_running_record_that_went_bad_and_requeues_the_others(
    broker: RedisBroker, corrupt: Callable[..., None], spoil: Callable[[bytes], bytes]
) -> None:
    batch = _messages(3)
    broker.enqueue(batch, now=T0)
    leased = _reserve(broker, lease=10.0)
    assert len(leased) == 3
    bad = batch[1].id
    corrupt(bad, spoil)

    reclaimed = broker.reclaim(now=T0 + 60)

    assert sorted(reclaimed.requeued) == sorted(m.id for m in batch if m.id != bad)
    assert reclaimed.dead == [bad]
    (dead,) = broker.dead()
    assert dead.id == bad and dead.errors[-1]["type"] == "CorruptRecord"
    assert broker.reclaim(now=T0 + 120).requeued == []
    assert sorted(d.id for d in _reserve(broker, now=T0 + 61)) == sorted(reclaimed.requeued)
    _listings_answer(broker, bad, T0 + 61)


def test_outcomes_heartbeats_and_releases_of_the_others_go_through(
    broker: RedisBroker, corrupt: Callable[..., None], spoil: Callable[[bytes], bytes]
) -> None:
    batch = _messages(4)
    broker.enqueue(batch, now=T0)
    leased = {d.id: d for d in _reserve(broker)}
    bad = batch[0].id
    corrupt(bad, spoil)
    a, b, c = (leased[m.id] for m in batch[1:])

    assert broker.extend([(d.id, d.token) for d in leased.values()], 30.0, now=T0 + 1) == [bad]
    acks = broker.ack(
        [Outcome(leased[bad].id, leased[bad].token, "succeeded"), Outcome(a.id, a.token, "succeeded")],
        now=T0 + 2,
    )
    assert [s.status for s in acks] == ["lost", "ok"]
    assert broker.release([(leased[bad].id, leased[bad].token), (b.id, b.token)]) == 1
    error = {"attempt": 1, "type": "E", "message": "m", "traceback": None, "worker": "w1", "at": T0}
    assert [s.status for s in broker.ack([Outcome(c.id, c.token, "dead", error=error)], now=T0 + 3)] == ["ok"]
    assert broker.cancel(bad, now=T0 + 3) is False
    assert broker.get(a.id, now=T0 + 3).state == "succeeded"  # type: ignore[union-attr]
    assert broker.get(b.id, now=T0 + 3).state == "ready"  # type: ignore[union-attr]
    _listings_answer(broker, bad, T0 + 3)
    # The bad one is still leased in the index: its lease runs out and reclaim buries it.
    assert broker.reclaim(now=T0 + 120).dead == [bad]
    counts = _counts(broker, now=T0 + 120)
    # Counted dead at its own level when its first bytes tell it, else at level 0; the running
    # count is right either way (recounted from the lease index).
    assert counts.pop("dead") in ({1: 2}, {1: 1, 0: 1})
    assert counts == {"ready": {1: 1}, "succeeded": {1: 1}}


@pytest.mark.parametrize("where", ["pending", "scheduled", "dead", "succeeded", "cancelled"])
def test_a_record_gone_bad_in_any_state_leaves_every_listing_and_sweep_answering(
    broker: RedisBroker, corrupt: Callable[..., None], spoil: Callable[[bytes], bytes], where: str
) -> None:
    others = _messages(2)
    (m,) = _messages(1, delay=3600.0) if where == "scheduled" else _messages(1)
    broker.enqueue([m, *others], now=T0)
    if where in ("dead", "succeeded"):
        (d,) = [d for d in _reserve(broker) if d.id == m.id] or [None]
        assert d is not None
        error = {"attempt": 1, "type": "E", "message": "m", "traceback": None, "worker": "w1", "at": T0}
        kind = "dead" if where == "dead" else "succeeded"
        broker.ack([Outcome(d.id, d.token, kind, error=error if kind == "dead" else None)], now=T0)
    elif where == "cancelled":
        assert broker.cancel(m.id, now=T0)
    corrupt(m.id, spoil)

    _listings_answer(broker, m.id, T0 + 1)
    assert broker.cancel(m.id, now=T0 + 1) is False
    broker.replay([m.id], now=T0 + 1)
    broker.reclaim(now=T0 + 2)
    broker.expire(now=T0 + 10**6)
    broker.purge()
    listed = broker.jobs(now=T0 + 2)  # still answers after every sweep
    assert {o.id for o in others} <= {j.id for j in listed}


def test_purge_and_expire_delete_a_bad_record_in_their_index(
    broker: RedisBroker, corrupt: Callable[..., None], admin: Any, store_url: str
) -> None:
    dead, done, lost = _messages(3)
    broker.enqueue([dead, done, lost], now=T0)
    leased = {d.id: d for d in _reserve(broker)}
    error = {"attempt": 1, "type": "E", "message": "m", "traceback": None, "worker": "w1", "at": T0}
    broker.ack(
        [
            Outcome(dead.id, leased[dead.id].token, "dead", error=error),
            Outcome(done.id, leased[done.id].token, "succeeded"),
            Outcome(lost.id, leased[lost.id].token, "succeeded"),
        ],
        now=T0,
    )
    corrupt(dead.id, SPOILS["truncated"])
    corrupt(done.id, SPOILS["truncated"])
    corrupt(lost.id, SPOILS["garbage"])

    assert broker.purge() == 1
    assert broker.expire(now=T0 + 10**6) == 2
    assert admin.hlen(f"{parse(store_url).prefix}:{{q}}:jobs") == 0
    # A truncated record keeps its first fields, state and level among them: its count goes with
    # it. Nothing tells the state or level of garbage in the finished index: its count stays.
    assert _counts(broker, now=T0 + 10**6) == {"succeeded": {1: 1}}


def test_a_key_held_by_a_bad_record_is_a_conflict_not_a_script_error(
    broker: RedisBroker, corrupt: Callable[..., None]
) -> None:
    (held,) = _messages(1, key="order-1")
    broker.enqueue([held], now=T0)
    corrupt(held.id, SPOILS["garbage"])
    with pytest.raises(KeyConflict, match=held.id):
        broker.enqueue(_messages(1, key="order-1"), now=T0)


def test_a_worker_runs_the_good_jobs_of_a_batch_with_a_garbage_record(
    store_url: str, corrupt: Callable[..., None], run_worker: Any
) -> None:
    app = Conveyor(store_url)
    done: list[int] = []

    @app.task(name="work", queue="q")
    def work(n: int) -> None:
        done.append(n)

    jobs = [work.message(n) for n in range(6)]
    app.enqueue_many(jobs)
    corrupt(jobs[3].id, SPOILS["garbage"])
    with run_worker(app, queues=["q"], concurrency=8):
        for m in jobs:
            if m.id != jobs[3].id:
                app.job(m.id).result(timeout=10)
    assert sorted(done) == [0, 1, 2, 4, 5]
    (dead,) = app.broker.dead()
    assert dead.id == jobs[3].id and dead.errors[-1]["type"] == "CorruptRecord"
    runner = CliRunner()
    for args in (
        ["dead", "list", store_url],
        ["dead", "list", "--json", store_url],
        ["job", store_url, dead.id],
    ):
        result = runner.invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert dead.id in result.output
    app.close()


def test_a_stray_member_of_a_pending_index_costs_nothing_else(
    broker: RedisBroker, corrupt: Callable[..., None], admin: Any, store_url: str
) -> None:
    batch = _messages(4)
    broker.enqueue(batch, now=T0)
    base = f"{parse(store_url).prefix}:{{q}}"
    # Members too short to hold a sequence, one of them naming a (garbage) record, one naming none.
    admin.zadd(f"{base}:pending:1", {b"x": 0, b"\x00" * 7 + b"nope": 0})
    admin.hset(f"{base}:jobs", "", b"garbage")
    corrupt(batch[1].id, SPOILS["garbage"])

    leased = _reserve(broker)

    assert sorted(d.id for d in leased) == sorted(m.id for m in batch if m.id != batch[1].id)
    assert sorted(j.id for j in broker.dead()) == sorted(["", batch[1].id])
