"""enqueue and get: ids, ready vs scheduled, payloads, idempotency keys."""

from __future__ import annotations

import pytest

from conveyor.errors import ConfigurationError, KeyConflict
from conveyor.ids import new_id
from conveyor.records import Enqueued

from .backends import RETENTION
from .helpers import enqueue, info, make_message, reserve_one, statuses, succeeded, total


def test_enqueue_returns_ids_and_created_flags_in_order(broker, t0):
    existing = make_message(key="k1")
    enqueue(broker, t0, existing)
    batch = [make_message(), make_message(key="k1"), make_message(), make_message()]

    out = broker.enqueue(batch, now=t0)

    assert out == [
        Enqueued(batch[0].id, True),
        Enqueued(existing.id, False),
        Enqueued(batch[2].id, True),
        Enqueued(batch[3].id, True),
    ]


def test_message_without_delay_is_ready_with_its_fields(broker, t0):
    m = make_message(task="send", queue="mail", priority=2, key="k", max_attempts=7)
    enqueue(broker, t0, m)

    job = info(broker, m.id, now=t0)

    assert job.state == "ready"
    assert (job.task, job.queue, job.priority, job.key, job.max_attempts) == ("send", "mail", 2, "k", 7)
    assert job.attempt == 0
    assert job.run_at == pytest.approx(t0)
    assert job.enqueued_at == pytest.approx(t0)
    assert job.errors == []
    assert job.result is None


def test_delay_makes_the_job_scheduled_until_due(broker, t0):
    m = make_message(delay=60)
    enqueue(broker, t0, m)

    assert info(broker, m.id, now=t0).state == "scheduled"
    assert info(broker, m.id, now=t0 + 59.5).state == "scheduled"
    assert info(broker, m.id, now=t0 + 60).state == "ready"
    assert info(broker, m.id, now=t0).run_at == pytest.approx(t0 + 60)


def test_run_at_schedules_at_an_absolute_time(broker, t0):
    m = make_message(run_at=t0 + 3600)
    enqueue(broker, t0, m)

    job = info(broker, m.id, now=t0 + 10)
    assert job.state == "scheduled"
    assert job.run_at == pytest.approx(t0 + 3600)
    assert info(broker, m.id, now=t0 + 3600).state == "ready"


def test_run_at_in_the_past_is_ready(broker, t0):
    m = make_message(run_at=t0 - 5)
    enqueue(broker, t0, m)

    assert info(broker, m.id, now=t0).state == "ready"


def test_get_of_an_unknown_id_is_none(broker, t0):
    enqueue(broker, t0, make_message())

    assert broker.get(new_id(), now=t0) is None


@pytest.mark.parametrize(
    "payload",
    [
        '[["café", "\\u0000", "日本"], {"n": 1.5e300}]'.encode(),
        bytes(range(256)) * 4,
    ],
    ids=["json", "binary"],
)
def test_payload_round_trips_bytes_exactly(broker, t0, payload):
    m = make_message(payload=payload)
    enqueue(broker, t0, m)

    stored = info(broker, m.id, now=t0).payload
    delivered = reserve_one(broker, t0).payload

    assert type(stored) is bytes
    assert stored == payload
    assert type(delivered) is bytes
    assert delivered == payload


# -- idempotency keys ------------------------------------------------------------------------


def test_same_key_and_payload_returns_the_existing_job(broker, t0):
    first = make_message(key="order-42", payload=b"[[42],{}]")
    again = make_message(key="order-42", payload=b"[[42],{}]")
    enqueue(broker, t0, first)

    out = broker.enqueue([again], now=t0 + 1)

    assert out == [Enqueued(first.id, False)]
    assert broker.get(again.id, now=t0 + 1) is None
    assert total(broker, "q", "ready", now=t0 + 1) == 1


def test_same_key_different_payload_raises_and_stores_nothing_of_the_batch(broker, t0):
    first = make_message(key="order-42", payload=b"[[42],{}]")
    enqueue(broker, t0, first)
    batch = [
        make_message(),
        make_message(key="fresh"),
        make_message(key="order-42", payload=b"[[43],{}]"),
        make_message(),
    ]

    with pytest.raises(KeyConflict):
        broker.enqueue(batch, now=t0 + 1)

    assert [broker.get(m.id, now=t0 + 1) for m in batch] == [None] * 4
    assert total(broker, "q", "ready", now=t0 + 1) == 1
    assert info(broker, first.id, now=t0 + 1).payload == b"[[42],{}]"
    # The batch's other key was not taken either.
    assert broker.enqueue([make_message(key="fresh", payload=b"[[1],{}]")], now=t0 + 2)[0].created


def test_same_key_different_task_raises(broker, t0):
    enqueue(broker, t0, make_message(task="a", key="k"))

    with pytest.raises(KeyConflict):
        broker.enqueue([make_message(task="b", key="k")], now=t0)

    assert total(broker, "q", "ready", now=t0) == 1


def test_duplicate_key_within_one_batch_creates_one_job(broker, t0):
    a = make_message(key="k")
    b = make_message(key="k")

    out = broker.enqueue([a, b], now=t0)

    assert out == [Enqueued(a.id, True), Enqueued(a.id, False)]
    assert broker.get(b.id, now=t0) is None
    assert total(broker, "q", "ready", now=t0) == 1


def test_conflicting_key_within_one_batch_stores_nothing(broker, t0):
    batch = [make_message(key="k", payload=b"[[1],{}]"), make_message(key="k", payload=b"[[2],{}]")]

    with pytest.raises(KeyConflict):
        broker.enqueue(batch, now=t0)

    assert broker.get(batch[0].id, now=t0) is None
    assert total(broker, "q", "ready", now=t0) == 0


def test_key_is_held_by_a_running_job(broker, t0):
    m = make_message(key="k")
    enqueue(broker, t0, m)
    reserve_one(broker, t0)

    out = broker.enqueue([make_message(key="k")], now=t0 + 1)

    assert out == [Enqueued(m.id, False)]
    assert total(broker, "q", "ready", now=t0 + 1) == 0


def test_key_is_deduped_after_success_within_retention_then_free_after_expiry(broker, t0):
    m = make_message(key="k")
    enqueue(broker, t0, m)
    assert statuses(broker, [succeeded(reserve_one(broker, t0))], now=t0 + 1) == ["ok"]

    assert broker.expire(now=t0 + 1 + RETENTION - 10) == 0
    again = make_message(key="k")
    assert broker.enqueue([again], now=t0 + RETENTION - 5) == [Enqueued(m.id, False)]
    assert info(broker, m.id, now=t0 + RETENTION - 5).state == "succeeded"

    assert broker.expire(now=t0 + 1 + RETENTION + 10) == 1
    assert broker.get(m.id, now=t0 + RETENTION + 20) is None
    assert broker.enqueue([again], now=t0 + RETENTION + 20) == [Enqueued(again.id, True)]


def test_key_with_a_different_payload_conflicts_after_success(broker, t0):
    enqueue(broker, t0, make_message(key="k", payload=b"[[1],{}]"))
    assert statuses(broker, [succeeded(reserve_one(broker, t0))], now=t0 + 1) == ["ok"]

    with pytest.raises(KeyConflict):
        broker.enqueue([make_message(key="k", payload=b"[[2],{}]")], now=t0 + 2)


def test_keys_are_scoped_to_their_queue(broker, t0):
    mail = make_message(queue="mail", key="k", payload=b"[[1],{}]")
    web = make_message(queue="web", key="k", payload=b"[[2],{}]")

    # One call per queue: on a Redis Cluster a keyed batch keeps to one hash slot (test_keys).
    out = broker.enqueue([mail], now=t0) + broker.enqueue([web], now=t0)

    assert out == [Enqueued(mail.id, True), Enqueued(web.id, True)]
    assert broker.enqueue([make_message(queue="web", key="k", payload=b"[[2],{}]")], now=t0) == [
        Enqueued(web.id, False)
    ]


def test_a_foreign_connection_is_refused(broker, t0):
    m = make_message()

    with pytest.raises(ConfigurationError):
        broker.enqueue([m], now=t0, connection=object())

    assert broker.get(m.id, now=t0) is None


def test_whole_and_fractional_times_mix_in_one_batch(broker, t0):
    """Delays and due times given as ints beside floats (SQL stores send each column as one
    typed array, where ints and floats must not mix)."""
    batch = [
        make_message(delay=2),
        make_message(delay=0.5),
        make_message(run_at=int(t0) + 10),
        make_message(run_at=t0 + 20.25),
    ]
    enqueue(broker, t0, *batch)

    due = [info(broker, m.id, now=t0).run_at for m in batch]

    assert due == pytest.approx([t0 + 2, t0 + 0.5, int(t0) + 10, t0 + 20.25])
