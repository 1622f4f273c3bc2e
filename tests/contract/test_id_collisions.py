"""Job ids are unique across the store (issue 26, finding 10): a message built by hand with the
id of another job, of any queue, is refused with DuplicateId and stores nothing of its batch, so
it can never shadow that job; the same message sent again is no other job and returns its own;
an idempotency key that resolves to a job still returns that job, whatever the message's id."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from conveyor import Conveyor, DuplicateId
from conveyor.errors import ConveyorError
from conveyor.records import Enqueued, Message

from .helpers import PAYLOAD, enqueue, info, make_message, reserve, statuses, succeeded, total


def _like(m: Message, **fields: Any) -> Message:
    return msgspec.structs.replace(m, **fields)


def test_an_id_held_by_a_job_of_another_queue_is_refused_storing_nothing_of_the_batch(broker, t0):
    victim = make_message(queue="a", payload=b'[["victim"],{}]')
    enqueue(broker, t0, victim)
    fresh = make_message(queue="b")
    thief = _like(victim, queue="b", payload=b'[["thief"],{}]')

    with pytest.raises(DuplicateId, match=victim.id):
        broker.enqueue([fresh, thief], now=t0)

    assert broker.get(fresh.id, now=t0) is None
    assert total(broker, "b", "ready", t0) == 0
    job = info(broker, victim.id, t0)
    assert (job.queue, job.payload, job.state) == ("a", b'[["victim"],{}]', "ready")


@pytest.mark.parametrize("queue", ["a", "b"])
def test_the_victim_keeps_its_id_through_its_whole_life(broker, t0, queue):
    """The damage the refusal prevents: a second job under the victim's id made get() answer
    with the thief and the victim's outcome go astray, so it ended dead."""
    victim = make_message(queue="a")
    enqueue(broker, t0, victim)
    with pytest.raises(DuplicateId):
        broker.enqueue([_like(victim, queue=queue, payload=b'[["thief"],{}]')], now=t0)

    (d,) = reserve(broker, t0, queues=("a", "b"))
    assert d.id == victim.id and d.queue == "a"
    assert statuses(broker, [succeeded(d)], t0 + 1) == ["ok"]
    assert info(broker, victim.id, t0 + 1).state == "succeeded"
    # Finished, it still holds its id.
    with pytest.raises(DuplicateId):
        broker.enqueue([_like(victim, queue="b")], now=t0 + 2)
    assert total(broker, "b", "ready", t0 + 2) == 0


def test_the_same_message_sent_again_returns_its_job_and_stores_nothing(broker, t0):
    m = make_message(queue="a")
    enqueue(broker, t0, m)
    assert broker.enqueue([m], now=t0 + 1) == [Enqueued(m.id, True)]
    assert broker.enqueue([m, m], now=t0 + 2) == [Enqueued(m.id, True)] * 2
    assert total(broker, "a", "ready", t0 + 2) == 1
    # Sent again, with the same id, but not the same message: another job's id.
    for other in (
        _like(m, payload=b"[[2],{}]"),
        _like(m, task="other"),
        _like(m, priority=0),
        _like(m, max_attempts=9),
    ):
        with pytest.raises(DuplicateId):
            broker.enqueue([other], now=t0 + 3)
    assert info(broker, m.id, t0 + 3).payload == PAYLOAD


def test_one_id_on_two_messages_of_a_batch(broker, t0):
    m = make_message(queue="a")
    assert broker.enqueue([m, m], now=t0) == [Enqueued(m.id, True)] * 2  # the same message twice
    assert total(broker, "a", "ready", t0) == 1

    n = make_message(queue="a")
    for twin in (_like(n, payload=b"[[9],{}]"), _like(n, queue="b")):
        with pytest.raises(DuplicateId, match=n.id):
            broker.enqueue([n, twin], now=t0)
        assert broker.get(n.id, now=t0) is None
    assert total(broker, "a", "ready", t0) == 1
    assert total(broker, "b", "ready", t0) == 0


def test_a_key_that_resolves_to_a_job_returns_it_whatever_the_id(broker, t0):
    holder = make_message(queue="a", key="order-1")
    other = make_message(queue="a")
    enqueue(broker, t0, holder, other)
    # The same keyed message again, or a new one of the same call under another job's id.
    assert broker.enqueue([holder], now=t0) == [Enqueued(holder.id, False)]
    assert broker.enqueue([_like(holder, id=other.id)], now=t0) == [Enqueued(holder.id, False)]
    # A free key does not excuse a taken id.
    with pytest.raises(DuplicateId):
        broker.enqueue([_like(other, key="fresh")], now=t0)
    assert broker.enqueue([make_message(queue="a", key="fresh")], now=t0)[0].created
    assert total(broker, "a", "ready", t0) == 3


def test_a_duplicate_in_a_callers_transaction_undoes_only_its_batch(broker, t0, transaction, sql):
    victim = make_message(queue="a")
    enqueue(broker, t0, victim)
    sql("CREATE TABLE t (v INTEGER)")
    fresh = make_message(queue="b")
    with transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(DuplicateId):
            broker.enqueue([fresh, _like(victim, queue="b")], now=t0, connection=conn)
        conn.execute("INSERT INTO t VALUES (2)")
    assert sql("SELECT v FROM t ORDER BY v") == [(1,), (2,)]
    assert broker.get(fresh.id, now=t0) is None


def test_the_application_refuses_a_hand_built_message_with_a_taken_id(store_url):
    app = Conveyor(store_url)
    try:

        @app.task(name="t", queue="a")
        def t(n: int) -> None: ...

        victim = t.enqueue(1)
        thief = Message(id=victim.id, task="t", queue="b", priority=1, payload=b"[[2],{}]")
        with pytest.raises(ConveyorError, match="held by another job"):
            app.enqueue_many([thief])
        assert victim.info().queue == "a"
    finally:
        app.close()


@pytest.mark.parametrize("into", ["q", "a", "b"])
def test_a_follow_up_enqueue_with_a_taken_id_fails_its_outcome_only(broker, t0, into):
    """``current_job().enqueue`` of a hand-built message: the outcome that carries it fails as
    its effects would (the job stays running), the victim and the other outcomes are untouched."""
    victim = make_message(queue="a", payload=b'[["victim"],{}]')
    enqueue(broker, t0, victim, make_message(queue="q"), make_message(queue="q"))
    d1, d2 = reserve(broker, t0, queues=("q",))
    thief = _like(victim, queue=into, payload=b'[["thief"],{}]')
    fine = make_message(queue="b")

    acks = broker.ack([succeeded(d1, enqueues=(thief,)), succeeded(d2, enqueues=(fine,))], now=t0 + 1)

    assert [a.status for a in acks] == ["effects_failed", "ok"]
    assert "DuplicateId" in (acks[0].error or "")
    assert info(broker, d1.id, t0 + 1).state == "running"
    job = info(broker, victim.id, t0 + 1)
    assert (job.queue, job.payload) == ("a", b'[["victim"],{}]')
    assert info(broker, fine.id, t0 + 1).queue == "b"
