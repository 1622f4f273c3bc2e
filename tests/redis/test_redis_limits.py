"""Limits on Redis beyond the contract: what a queue without limits stores, grouped pending jobs
in every listing and path back to pending, the wait's deadline under throttling, and corrupt
limit state costing only itself (docs/flow-control.md; the layout is in lib.lua)."""

from __future__ import annotations

import time

from conveyor.brokers.redis import RedisBroker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome, Rule

LIMIT_KEYS = (":limits", ":grules", ":groups:", ":turns:", ":grouped:", ":gp:", ":waiters:")


def message(*rules: Rule, queue: str = "q", delay: float = 0.0) -> Message:
    return Message(
        id=new_id(), task="t", queue=queue, priority=1, payload=b"[[],{}]", delay=delay, limits=rules
    )


def reserve(broker: RedisBroker, now: float, limit: int = 10, lease: float = 30.0) -> list[str]:
    return [d.id for d in broker.reserve(["q"], limit, lease, "w", Fairness((6, 3, 1)), now=now)]


def stored_keys(admin, broker: RedisBroker) -> set[str]:
    return {k.decode() for k in admin.scan_iter(match=f"{broker.target.prefix}:*", count=1000)}


def next_due(broker: RedisBroker, queue: str = "q") -> str:
    (due,) = broker._run([("next_due", broker._keys(queue, "jobs", "counts", "paused"), [])])
    return due.decode()


def test_a_queue_without_limits_stores_nothing_of_them(open_redis, admin):
    broker = open_redis()
    now = broker.time()
    broker.enqueue([message(), message(delay=60)], now=now)
    (a,) = broker.reserve(["q"], 5, 30.0, "w", Fairness((6, 3, 1)), now=now)
    broker.ack([Outcome(a.id, a.token, "retry", delay=5, error={"type": "E"})], now=now)

    keys = stored_keys(admin, broker)

    assert not [k for k in keys if any(part in k for part in LIMIT_KEYS)], keys
    record = admin.hget(f"{broker.target.prefix}:{{q}}:jobs", a.id)
    assert len(record) < 80  # no trailing limit fields


def test_grouped_pending_jobs_are_listed_counted_and_cancellable(open_redis):
    broker = open_redis()
    now = broker.time()
    k = Rule(key="k", rate=1.0)
    ready, later, plain = message(k), message(k, delay=60), message()
    broker.enqueue([ready, later, plain], now=now)

    assert {j.id for j in broker.jobs("q", state="ready", now=now)} == {ready.id, plain.id}
    assert [j.id for j in broker.jobs("q", state="scheduled", now=now)] == [later.id]
    (stats,) = broker.stats(["q"], now=now)
    assert stats.counts == {"ready": {1: 2}, "scheduled": {1: 1}}
    assert broker.get(ready.id, now=now).state == "ready"  # type: ignore[union-attr]

    assert broker.cancel(ready.id, now=now) is True
    assert reserve(broker, now) == [plain.id]
    assert reserve(broker, now + 61) == [later.id]


def test_wait_deadline_is_the_next_token_not_the_throttled_due_times(open_redis):
    broker = open_redis()
    now = broker.time()
    broker.enqueue([message(Rule(key="k", rate=1 / 60)) for _ in range(3)], now=now)
    assert len(reserve(broker, now)) == 1

    # Two jobs are due but their key's next token is a minute away: no busy loop on them.
    assert float(next_due(broker)) > 30


def test_a_queue_limit_blocked_on_slots_waits_for_a_freed_one(open_redis):
    broker = open_redis()
    now = broker.time()
    broker.set_limit("q", Rule(key="", concurrency=1))
    broker.enqueue([message(), message()], now=now)
    (first,) = reserve(broker, now)

    assert next_due(broker) == ""  # everything waits for the slot: a freed one wakes workers
    broker.ack([Outcome(first, 1, "succeeded", result=b"null")], now=now)
    assert len(reserve(broker, now)) == 1


def test_a_retried_job_whose_group_emptied_keeps_its_limits(open_redis):
    broker = open_redis()
    now = broker.time()
    only = message(Rule(key="k", concurrency=1))
    broker.enqueue([only], now=now)
    (d,) = broker.reserve(["q"], 5, 30.0, "w", Fairness((6, 3, 1)), now=now)
    broker.ack([Outcome(d.id, d.token, "retry", delay=0, error={"type": "E"})], now=now)
    broker.enqueue([message(Rule(key="k", concurrency=1))], now=now)

    assert len(reserve(broker, now)) == 1  # concurrency 1 still holds after the group emptied


def test_a_replayed_job_returns_to_its_group(open_redis):
    broker = open_redis()
    now = broker.time()
    k = Rule(key="k", concurrency=1)
    doomed = message(k)
    broker.enqueue([doomed], now=now)
    (d,) = broker.reserve(["q"], 5, 30.0, "w", Fairness((6, 3, 1)), now=now)
    broker.ack([Outcome(d.id, d.token, "dead", error={"type": "E"})], now=now)
    broker.enqueue([message(k)], now=now)
    (running,) = reserve(broker, now)

    assert broker.replay([doomed.id], now=now) == 1
    assert reserve(broker, now) == []  # k's one slot is held
    broker.ack([Outcome(running, 1, "succeeded", result=b"null")], now=now)
    assert reserve(broker, now) == [doomed.id]


def test_a_reclaimed_job_frees_its_slot_even_when_buried(open_redis):
    broker = open_redis()
    now = broker.time()
    k = Rule(key="k", concurrency=1)
    once = Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[]", max_attempts=1, limits=(k,))
    broker.enqueue([once, message(k)], now=now)
    assert reserve(broker, now, lease=1) == [once.id]

    assert broker.reclaim(now=now + 2).dead == [once.id]
    assert len(reserve(broker, now + 2)) == 1


def test_corrupt_rules_and_held_slots_cost_only_themselves(open_redis, admin):
    broker = open_redis()
    now = broker.time()
    base = f"{broker.target.prefix}:{{q}}"
    broker.enqueue([message(Rule(key="k", concurrency=1)) for _ in range(3)], now=now)
    (running,) = broker.reserve(["q"], 1, 30.0, "w", Fairness((6, 3, 1)), now=now)
    admin.hset(f"{base}:grules", "k", b"\xc1garbage")
    record = admin.hget(f"{base}:jobs", running.id)
    assert record.endswith(b"\x91\xa1k")  # held: ["k"]
    admin.hset(f"{base}:jobs", running.id, record[:-3] + b"\xa3bad")

    (status,) = broker.ack([Outcome(running.id, running.token, "succeeded", result=b"null")], now=now)
    assert status.status == "ok"
    # The group declares nothing now: its jobs run (the slot count of k is left as it was).
    assert len(reserve(broker, now)) == 2


def test_set_limit_refuses_a_rule_no_limit_may_have(open_redis):
    import pytest

    from conveyor.errors import ConfigurationError

    broker = open_redis()
    for bad in (
        Rule(key=""),
        Rule(key="k", rate=-1.0),
        Rule(key="k\n", concurrency=1),
        Rule(key="k", concurrency=0),
    ):
        with pytest.raises(ConfigurationError):
            broker.set_limit("q", bad)
    assert broker.limits("q") == []


def test_limits_survive_a_new_handle_and_list_a_throttle(open_redis):
    broker = open_redis()
    now = time.time()
    broker.enqueue([message(Rule(key="k", rate=10.0, burst=5)) for _ in range(2)], now=now)
    (d,) = broker.reserve(["q"], 1, 30.0, "w", Fairness((6, 3, 1)), now=now)
    broker.ack([Outcome(d.id, d.token, "throttled", delay=30, error={"type": "RateLimited"})], now=now)

    (k,) = open_redis().limits("q", now=now + 1)

    assert (k.key, k.rate, k.burst, k.override, k.running) == ("k", 10.0, 5, False, 0)
    assert k.closed_until == now + 30
    assert k.tokens == 5
