"""Limit state of tenants gone idle is deleted by the expiry sweep, and nothing else is
(docs/flow-control.md, "Cost"): a group without a pending job, a key whose bucket is full with no
slot held, no throttle and no run-time rule. What a store keeps is read past the broker
(``Backend.limit_state``); the broker's own behaviour afterwards is the same as if it had kept it.
"""

from __future__ import annotations

import pytest

from conveyor.limits import group_of
from conveyor.records import Outcome, Rule

from .helpers import enqueue, reserve
from .test_limits import limited, ok, rate, slots


def test_idle_groups_and_keys_are_forgotten_and_busy_ones_kept(backend, broker, store_url, t0):
    if backend.limit_state is None:
        pytest.skip(f"{backend.name}: no way to read its limit state in this suite")
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

    groups, keys = backend.limit_state(store_url)
    assert groups == {group_of(shut.limits), group_of(later.limits)}  # each has a pending job
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
