"""Pauses, limits and corrupt records together on Redis: a paused task's jobs with limits are
parked at the heads of their groups before any token or slot is spent on them, and go back to
their group on resume; a corrupt record met in a claim by turns is buried and gives back the
slots taken for it (docs/flow-control.md; the layout is in lib.lua)."""

from __future__ import annotations

from typing import Any

from conveyor.brokers.redis import RedisBroker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome, Rule


def message(*rules: Rule, task: str = "t", delay: float = 0.0) -> Message:
    return Message(
        id=new_id(), task=task, queue="q", priority=1, payload=b"[[],{}]", delay=delay, limits=rules
    )


def reserve(broker: RedisBroker, now: float, limit: int = 10) -> list[str]:
    return [d.id for d in broker.reserve(["q"], limit, 30.0, "w", Fairness((6, 3, 1)), now=now)]


def reserve_split(broker: RedisBroker, now: float, limit: int = 10) -> list[str]:
    """A reservation over two queues: the 'ready' then 'take' scripts, not 'fair'."""
    got = broker.reserve(["q", "other"], limit, 30.0, "w", Fairness((6, 3, 1)), now=now)
    return [d.id for d in got]


def test_a_paused_task_s_grouped_jobs_are_parked_not_claimed_and_return_on_resume(open_redis, admin):
    broker = open_redis()
    now = broker.time()
    k = Rule(key="k", concurrency=1)
    paused = [message(k) for _ in range(3)]
    broker.enqueue(paused, now=now)
    broker.pause("q", "t")

    assert reserve(broker, now) == []

    base = f"{broker.target.prefix}:{{q}}"
    parked = {x.decode() for x in admin.zrange(f"{base}:parked:t", 0, -1)}
    assert parked == {m.id for m in paused}
    assert broker.limits("q", now=now) == []  # no slot of k taken for a paused job
    assert {j.id for j in broker.jobs("q", state="ready", now=now)} == parked
    (stats,) = broker.stats(["q"], now=now)
    assert (stats.total("ready"), stats.throttled) == (3, 0)

    broker.resume("q", "t")
    assert admin.zcard(f"{base}:parked:t") == 0
    (first,) = reserve(broker, now + 1)
    assert reserve(broker, now + 1) == []  # k's one slot: the group's limit holds again
    broker.ack([Outcome(first, 1, "succeeded", result=b"null")], now=now + 1)
    assert len(reserve(broker, now + 1)) == 1


def test_a_paused_task_s_grouped_jobs_are_passed_by_the_others_of_their_group(open_redis):
    broker = open_redis()
    now = broker.time()
    k = Rule(key="k", rate=100.0, burst=100)
    paused = [message(k) for _ in range(4)]
    others = [message(k, task="u") for _ in range(2)]
    broker.enqueue(paused + others, now=now)
    broker.pause("q", "t")

    assert sorted(reserve_split(broker, now)) == sorted(m.id for m in others)
    (key,) = broker.limits("q", now=now)
    assert key.tokens == 98  # tokens spent on the two claimed jobs only

    broker.resume("q", "t")
    assert sorted(reserve_split(broker, now)) == sorted(m.id for m in paused)


def test_a_parked_grouped_job_can_be_cancelled_and_a_paused_queue_claims_none(open_redis, admin):
    broker = open_redis()
    now = broker.time()
    k = Rule(key="k", rate=100.0, burst=100)
    doomed, kept = message(k), message(k)
    broker.enqueue([doomed, kept], now=now)
    broker.pause("q", "t")
    assert reserve(broker, now) == []

    assert broker.cancel(doomed.id, now=now) is True
    broker.pause("q")
    broker.resume("q", "t")
    assert reserve(broker, now) == []  # the queue itself is still paused
    broker.resume("q")
    assert reserve(broker, now) == [kept.id]


def _spoil(admin: Any, broker: RedisBroker, job_id: str) -> None:
    admin.hset(f"{broker.target.prefix}:{{q}}:jobs", job_id, b"\xc1 not a record")


def test_a_corrupt_grouped_record_is_buried_and_gives_its_slot_back(open_redis, admin):
    broker = open_redis()
    now = broker.time()
    k = Rule(key="k", concurrency=1)
    bad, good = message(k), message(k)
    broker.enqueue([bad, good], now=now)
    _spoil(admin, broker, bad.id)

    assert reserve(broker, now, limit=1) == []  # the bad head is buried, the batch of one spent
    assert reserve(broker, now) == [good.id]  # k's slot was not kept by the buried record

    (dead,) = broker.jobs("q", state="dead", now=now)
    assert dead.id == bad.id
    (stats,) = broker.stats(["q"], now=now)
    assert stats.counts == {"dead": {1: 1}, "running": {1: 1}}


def test_a_corrupt_record_under_a_queue_limit_is_buried_in_the_claim(open_redis, admin):
    broker = open_redis()
    now = broker.time()
    broker.set_limit("q", Rule(key="", concurrency=2))
    bad, good = message(), message()
    broker.enqueue([bad, good], now=now)
    _spoil(admin, broker, bad.id)

    assert reserve(broker, now) == [good.id]
    (queue,) = broker.limits("q", now=now)
    assert queue.running == 1  # the slot taken for the buried record was given back


def test_a_running_corrupt_record_frees_the_slots_it_held_when_reclaimed(open_redis, admin):
    broker = open_redis()
    now = broker.time()
    k = Rule(key="k", concurrency=1)
    first, second = message(k), message(k)
    broker.enqueue([first, second], now=now)
    assert broker.reserve(["q"], 1, 1.0, "w", Fairness((6, 3, 1)), now=now)[0].id == first.id
    key = f"{broker.target.prefix}:{{q}}:jobs"
    record = admin.hget(key, first.id)
    assert record[:5] == b"\xdc\x00\x14\xa1t"  # 20 fields, the first the task "t"
    admin.hset(key, first.id, record[:3] + b"\xcc\x05" + record[5:])  # the task a number: corrupt

    assert broker.reclaim(now=now + 2).dead == [first.id]
    assert reserve(broker, now + 2) == [second.id]


def test_a_garbage_throttle_count_reads_as_none(open_redis, admin):
    broker = open_redis()
    now = broker.time()
    job = message(Rule(key="k", rate=100.0, burst=100))
    broker.enqueue([job], now=now)
    key = f"{broker.target.prefix}:{{q}}:jobs"
    record = admin.hget(key, job.id)
    assert record[:3] == b"\xdc\x00\x12"  # 18 fields, the group last
    admin.hset(key, job.id, b"\xdc\x00\x13" + record[3:] + b"\xa3bad")  # throttled: "bad"

    (d,) = broker.reserve(["q"], 5, 30.0, "w", Fairness((6, 3, 1)), now=now)
    assert (d.id, d.throttled) == (job.id, 0)
