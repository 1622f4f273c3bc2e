"""Job headers (docs/hooks.md): stored with the job, handed to the worker with each delivery,
read by ``get``, kept through retries, replays and follow-up enqueues; a job without headers
has none."""

from __future__ import annotations

import msgspec
import pytest

from conveyor.headers import MAX_BYTES
from conveyor.records import Message, Rule

from .helpers import buried, enqueue, info, make_message, reserve, reserve_one, retried, succeeded

TRACE = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tenant": "acme"}


def headed(headers: dict[str, str] | None = TRACE, **kwargs: object) -> Message:
    return msgspec.structs.replace(make_message(**kwargs), headers=headers)  # type: ignore[arg-type]


def test_headers_are_stored_read_and_delivered(broker, t0):
    m = headed()
    enqueue(broker, t0, m)

    assert info(broker, m.id, now=t0).headers == TRACE
    d = reserve_one(broker, now=t0)
    assert (d.id, d.headers) == (m.id, TRACE)


def test_a_job_without_headers_has_none(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)

    assert info(broker, m.id, now=t0).headers is None
    assert reserve_one(broker, now=t0).headers is None


def test_a_batch_mixes_jobs_with_and_without_headers(broker, t0):
    batch = [make_message(), headed({"a": "1"}), make_message(key="k"), headed({"b": "2"}, key="k2", delay=5)]
    enqueue(broker, t0, *batch)

    got = {d.id: d.headers for d in reserve(broker, now=t0 + 10)}

    assert got == {batch[0].id: None, batch[1].id: {"a": "1"}, batch[2].id: None, batch[3].id: {"b": "2"}}
    assert [info(broker, m.id, now=t0 + 10).headers for m in batch] == [None, {"a": "1"}, None, {"b": "2"}]


def test_headers_of_a_job_with_limits(broker, t0):
    m = msgspec.structs.replace(headed(), limits=(Rule(key="acct:1", concurrency=2),))
    enqueue(broker, t0, m)

    d = reserve_one(broker, now=t0)

    assert (d.id, d.headers) == (m.id, TRACE)
    assert info(broker, m.id, now=t0).headers == TRACE


def test_headers_at_the_size_limit_keep_every_character(broker, t0):
    value = "é☃𝄞" * 100
    big = {f"h{i:02d}": value for i in range(3)}
    big["pad"] = "x" * (MAX_BYTES - len(msgspec.json.encode(big)) - len(',"pad":""'))
    assert len(msgspec.json.encode(big)) == MAX_BYTES
    m = headed(big)
    enqueue(broker, t0, m)

    assert reserve_one(broker, now=t0).headers == big
    assert info(broker, m.id, now=t0).headers == big


def test_headers_are_kept_through_a_retry(broker, t0):
    m = headed()
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)
    assert [s.status for s in broker.ack([retried(d)], now=t0)] == ["ok"]

    again = reserve_one(broker, now=t0 + 1)

    assert (again.id, again.attempt, again.headers) == (m.id, 2, TRACE)


def test_headers_are_kept_through_a_replay(broker, t0):
    here, there = headed(), headed({"x": "y"})
    enqueue(broker, t0, here, there)
    for d in reserve(broker, now=t0):
        broker.ack([buried(d)], now=t0)

    assert broker.replay([here.id], now=t0 + 1) == 1
    assert broker.replay([there.id], queue="repair", now=t0 + 1) == 1

    assert reserve_one(broker, now=t0 + 1).headers == TRACE
    assert reserve_one(broker, now=t0 + 1, queues=["repair"]).headers == {"x": "y"}
    assert info(broker, there.id, now=t0 + 1).headers == {"x": "y"}


def test_a_follow_up_enqueue_keeps_its_headers(broker, t0):
    enqueue(broker, t0, make_message())
    d = reserve_one(broker, now=t0)
    follow = headed(queue="next")

    broker.ack([succeeded(d, enqueues=(follow,))], now=t0)

    assert reserve_one(broker, now=t0, queues=["next"]).headers == TRACE


def test_a_key_resolves_to_the_first_job_and_its_headers(broker, t0):
    first = headed({"req": "1"}, key="order-42")
    enqueue(broker, t0, first)

    out = broker.enqueue([headed({"req": "2"}, key="order-42")], now=t0)

    assert (out[0].id, out[0].created) == (first.id, False)
    assert info(broker, first.id, now=t0).headers == {"req": "1"}


@pytest.mark.parametrize("headers", [{"only": ""}, {"k": "v" * 2048}])
def test_edge_values(broker, t0, headers):
    m = headed(headers)
    enqueue(broker, t0, m)

    assert reserve_one(broker, now=t0).headers == headers
