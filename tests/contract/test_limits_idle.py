"""Limit state at rest is forgotten by the expiry sweep; state still in use is kept
(docs/flow-control.md, "Idle groups and keys").

Groups whose jobs have all finished, and keys whose bucket is full, that hold no slot, are not
throttled and have no run-time rule, leave the store at ``expire``: tenants seen once do not stay
for good. ``Backend.limit_state`` counts what the store keeps for a queue's groups and keys.
"""

from __future__ import annotations

import msgspec
import pytest

from conveyor.brokers import Broker
from conveyor.limits import group_of
from conveyor.records import Message, Outcome, Rule

from .backends import Backend
from .helpers import enqueue, error, make_message, reserve, retried, succeeded
from .test_limits import limited, ok, rate, slots


def _limited(queue: str, *rules: Rule) -> Message:
    return msgspec.structs.replace(make_message(queue=queue), limits=rules)


def _state(backend: Backend, store_url: str, queue: str) -> int:
    assert backend.limit_state is not None
    return backend.limit_state(store_url, queue)


def test_groups_and_keys_of_finished_tenants_are_forgotten(
    broker: Broker, backend: Backend, store_url, t0, request: pytest.FixtureRequest
):
    tenants = 20
    enqueue(
        broker,
        t0,
        *(_limited("q", Rule(key=f"tenant:{i}", rate=10.0, concurrency=1)) for i in range(tenants)),
    )
    got = reserve(broker, t0, limit=100)
    assert len(got) == tenants
    first, rest = got[0], got[1:]
    # One tenant is throttled for 5 s (its key closed), the others succeed.
    broker.ack([Outcome(first.id, first.token, "throttled", delay=5, error=error(1, "RateLimited"))], now=t0)
    broker.ack([succeeded(d) for d in rest], now=t0)
    again = reserve(broker, t0 + 6, limit=100)
    assert [d.id for d in again] == [first.id]
    broker.ack([succeeded(again[0])], now=t0 + 6)
    assert reserve(broker, t0 + 7, limit=100) == []  # a claim that finds every group empty
    assert _state(backend, store_url, "q") > 0

    broker.expire(now=t0 + 100)
    broker.expire(now=t0 + 100)

    assert _state(backend, store_url, "q") == 0
    # Forgotten is as new: the tenants' limits hold for their next jobs.
    enqueue(
        broker, t0 + 200, *(_limited("q", Rule(key="tenant:0", rate=10.0, concurrency=1)) for _ in range(2))
    )
    assert len(reserve(broker, t0 + 200, limit=100)) == 1


def test_state_in_use_is_kept(broker: Broker, backend: Backend, store_url, t0):
    """A group with a job running keeps its rules (a retry returns to it), a key with a slot held
    or a bucket not full keeps its state."""
    (solo,) = enqueue(broker, t0, _limited("q", Rule(key="solo", rate=1 / 3600)))
    slot_ids = enqueue(broker, t0, *(_limited("q", Rule(key="slot", concurrency=1)) for _ in range(2)))
    # Two claimed, no claim looks at the groups again: solo's has no job pending.
    held = {d.id: d for d in reserve(broker, t0, limit=2)}
    assert set(held) == {solo, slot_ids[0]}
    broker.extend([(d.id, d.token) for d in held.values()], 10_000.0, now=t0)

    broker.expire(now=t0 + 60)
    broker.expire(now=t0 + 60)

    # Retried, solo's job is back in its group, whose hourly rate still holds it back.
    broker.ack([retried(held[solo])], now=t0 + 60)
    assert reserve(broker, t0 + 70, limit=100) == []
    # The "slot" key still counts its running job: its end lets the second one start.
    broker.ack([succeeded(held[slot_ids[0]])], now=t0 + 70)
    assert [d.id for d in reserve(broker, t0 + 70, limit=100)] == [slot_ids[1]]


def test_idle_groups_and_keys_are_forgotten_and_busy_ones_kept(backend, broker, store_url, t0):
    """Which groups and keys the sweep keeps, by name (SQL stores: ``Backend.limit_sets``)."""
    if backend.limit_sets is None:
        pytest.skip(f"{backend.name}: no way to read its limit state by name in this suite")
    tenants = [(Rule(f"tenant:{i}", rate=10.0, concurrency=1),) for i in range(20)]
    enqueue(broker, t0, *(limited(*rules) for rules in tenants))
    got = reserve(broker, t0, limit=100)
    assert len(got) == 20
    ok(broker, t0, *(Outcome(d.id, d.token, "succeeded", result=b"null") for d in got))
    # Still busy at the sweep: a slot held, a throttle, a run-time rule, a job not due yet.
    busy, shut = limited(slots("busy", 1)), limited(slots("shut", 2))
    later = limited(rate("later", 1.0), run_at=t0 + 1000)
    enqueue(broker, t0, busy, shut, later)
    running = {d.id: d for d in reserve(broker, t0 + 1, limit=10)}
    assert set(running) == {busy.id, shut.id}
    throttled = running[shut.id]
    ok(broker, t0 + 1, Outcome(throttled.id, throttled.token, "throttled", delay=1000.0, error={"type": "E"}))
    broker.set_limit("q", Rule("kept", concurrency=2))
    assert reserve(broker, t0 + 2, limit=10) == []  # the drained groups are looked at once more

    broker.expire(now=t0 + 10)

    groups, keys = backend.limit_sets(store_url)
    # each has a job to come back to it: pending (shut, later) or running (busy)
    assert groups == {group_of(busy.limits), group_of(shut.limits), group_of(later.limits)}
    assert keys >= {"busy", "shut", "kept"}
    assert not {k for k in keys if k.startswith("tenant:")}
    # A tenant back after the sweep starts with a full bucket and free slots, as if never seen.
    again = [limited(*tenants[0]) for _ in range(2)]
    enqueue(broker, t0 + 10, *again)
    first = reserve(broker, t0 + 10, limit=10)
    assert [d.id for d in first] == [again[0].id]  # one slot
    assert reserve(broker, t0 + 10.05, limit=10) == []
    ok(broker, t0 + 10.05, Outcome(first[0].id, first[0].token, "succeeded", result=b"null"))
    assert [d.id for d in reserve(broker, t0 + 10.05, limit=10)] == []  # the rate: next at +0.1
    assert [d.id for d in reserve(broker, t0 + 10.1, limit=10)] == [again[1].id]
    # What the sweep kept still holds: the slot of "busy" is held, "shut" is closed.
    assert reserve(broker, t0 + 11, limit=10, queues=("q",)) == []
    assert {i.key: i.running for i in broker.limits("q", now=t0 + 11)}.get("busy") == 1
