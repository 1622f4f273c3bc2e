"""PostgreSQL's limit records: what the claim without limits leaves behind it (docs/flow-control.md)."""

from __future__ import annotations

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
