"""PostgreSQL's limit records: what the claim without limits leaves behind it (docs/flow-control.md)."""

from __future__ import annotations

import pytest

from conveyor.brokers.postgres import PostgresBroker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome, Rule


def plain() -> Message:
    return Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[]")


def test_a_claim_without_limits_holds_no_slot_a_former_claim_held(store_url: str) -> None:
    broker, other = PostgresBroker(store_url), PostgresBroker(store_url)
    fairness = Fairness((6, 3, 1))
    try:
        broker.enqueue([plain(), plain()])
        broker.set_limit("q", Rule(key="", concurrency=1))
        (first,) = broker.reserve(["q"], 1, 30.0, "w", fairness)  # holds the queue's slot
        assert broker.release([(first.id, first.token)]) == 1
        broker.clear_limit("q", "")
        (again,) = broker.reserve(["q"], 1, 30.0, "w", fairness)  # the claim without limits
        assert again.id == first.id
        broker.set_limit("q", Rule(key="", concurrency=1))
        (_second,) = broker.reserve(["q"], 1, 30.0, "w", fairness)  # takes the one slot

        # Acknowledged through a handle that did not claim it: the statement that frees slots.
        assert other.ack([Outcome(again.id, again.token, "succeeded", result=b"null")])[0].status == "ok"
        broker.enqueue([plain()])

        assert broker.reserve(["q"], 1, 30.0, "w", fairness) == []  # `_second` still holds it
        assert {i.key: i.running for i in broker.limits("q")}[""] == 1
    finally:
        broker.close()
        other.close()


def limited(*rules: Rule) -> Message:
    return Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[]", limits=rules)


def test_keys_with_room_for_the_whole_claim_are_charged_as_one_by_one(store_url: str) -> None:
    """The claim's fast path (keys that cannot refuse any of the claim's starts are charged once
    per share): the same slots, tokens and bounds as the checks job by job. A key declared
    loose by some groups and tight by another is checked job by job, and binds exactly."""
    broker = PostgresBroker(store_url)
    fairness = Fairness((6, 3, 1))
    try:
        loose = Rule("shared", rate=1000.0, burst=1000, concurrency=1000)
        tight = [limited(Rule("shared", concurrency=3)) for _ in range(5)]
        broker.enqueue([limited(loose, Rule(f"a:{i % 2}", rate=100.0, burst=50)) for i in range(8)] + tight)
        broker.set_limit("q", Rule("", concurrency=100))
        t1 = broker.time()

        got = broker.reserve(["q"], 32, 30.0, "w", fairness, now=t1)

        # The tight group's first turn comes before any start; at its second "shared" runs 3.
        assert len(got) == 9
        assert len({d.id for d in got} & {m.id for m in tight}) == 1
        keys = {i.key: i for i in broker.limits("q", now=t1)}
        assert (keys["shared"].running, keys[""].running) == (9, 9)
        assert [keys[f"a:{i}"].tokens for i in (0, 1)] == [pytest.approx(46.0), pytest.approx(46.0)]
        broker.ack([Outcome(d.id, d.token, "succeeded", result=b"null") for d in got], now=t1)
        broker.clear_limit("q", "")
        broker.set_limit("q", Rule("shared", rate=1000.0, burst=1000, concurrency=1000))

        again = broker.reserve(["q"], 32, 30.0, "w", fairness, now=t1)  # every key has room

        assert {d.id for d in again} == {m.id for m in tight} - {d.id for d in got}
        keys = {i.key: i for i in broker.limits("q", now=t1)}
        assert keys["shared"].running == 4
        assert keys["shared"].tokens == pytest.approx(1000.0 - 12)  # 8 + 4 starts at t1
    finally:
        broker.close()
