"""Idempotency keys: what counts as the same call, how long dead jobs hold a key, and batches
that span queues under concurrent producers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from conveyor import Conveyor
from conveyor.brokers import Broker
from conveyor.errors import KeyConflict
from conveyor.records import Enqueued

from .backends import RETENTION
from .helpers import buried, enqueue, info, make_message, reserve_one, statuses


@pytest.fixture
def app(store_url: str) -> Iterator[Conveyor]:
    application = Conveyor(store_url, retention=RETENTION)
    yield application
    application.close()


def test_a_call_is_the_same_however_its_arguments_are_passed(app: Conveyor) -> None:
    @app.task(name="charge")
    def charge(order_id: int, cents: int, currency: str = "usd", *, note: str = "") -> None: ...

    first = charge.enqueue(42, 1999, key="order-42")
    same = [
        charge.enqueue(order_id=42, cents=1999, key="order-42"),
        charge.enqueue(42, cents=1999, key="order-42"),
        charge.enqueue(cents=1999, order_id=42, key="order-42"),
    ]

    assert first.created
    assert [(j.id, j.created) for j in same] == [(first.id, False)] * 3
    with pytest.raises(KeyConflict):
        charge.enqueue(order_id=42, cents=2000, key="order-42")
    # A default passed explicitly is a different call from one that leaves it out: the job
    # runs with whatever default the worker's code has when it runs.
    with pytest.raises(KeyConflict):
        charge.enqueue(42, 1999, "usd", key="order-42")
    assert charge.enqueue(42, 1999, note="x", key="order-43").created
    assert not charge.enqueue(note="x", cents=1999, order_id=42, key="order-43").created


def test_extra_keyword_arguments_compare_by_name(app: Conveyor) -> None:
    @app.task(name="tag")
    def tag(item: int, *labels: str, **attrs: int) -> None: ...

    first = tag.enqueue(1, "a", "b", x=1, y=2, key="k")

    assert tag.enqueue(1, "a", "b", y=2, x=1, key="k").id == first.id
    with pytest.raises(KeyConflict):
        tag.enqueue(1, "b", "a", x=1, y=2, key="k")


def test_a_dead_job_holds_its_key_until_it_is_purged(broker: Broker, t0: float) -> None:
    m = make_message(key="k", payload=b"[[1],{}]")
    enqueue(broker, t0, m)
    assert statuses(broker, [buried(reserve_one(broker, t0))], now=t0 + 1) == ["ok"]

    later = t0 + 10 * RETENTION
    assert broker.expire(now=later) == 0  # the retention of finished jobs does not apply
    assert broker.enqueue([make_message(key="k", payload=b"[[1],{}]")], now=later) == [Enqueued(m.id, False)]
    assert info(broker, m.id, now=later).state == "dead"
    with pytest.raises(KeyConflict):
        broker.enqueue([make_message(key="k", payload=b"[[2],{}]")], now=later)

    assert broker.purge([m.id]) == 1
    again = make_message(key="k", payload=b"[[2],{}]")
    assert broker.enqueue([again], now=later) == [Enqueued(again.id, True)]


def test_a_replayed_dead_job_keeps_its_key(broker: Broker, t0: float) -> None:
    m = make_message(key="k")
    enqueue(broker, t0, m)
    assert statuses(broker, [buried(reserve_one(broker, t0))], now=t0 + 1) == ["ok"]

    assert broker.replay([m.id], now=t0 + 2) == 1

    assert broker.enqueue([make_message(key="k")], now=t0 + 3) == [Enqueued(m.id, False)]
    assert reserve_one(broker, t0 + 3).id == m.id


def test_racing_producers_store_all_or_nothing_of_batches_spanning_queues(
    open_handle: Callable[[], Broker], t0: float
) -> None:
    """Each round, every producer sends one batch holding the round's key in several queues,
    with a payload of its own: the queues overlap between producers but differ, so a producer
    can lose the key in one queue to a batch that does not touch another. A batch refused with
    KeyConflict must leave nothing stored; one accepted must own or share the key everywhere."""
    # Three queues of one hash slot (15495): a Redis Cluster stores a keyed batch all or nothing
    # only within one slot, and refuses one across slots (tests/redis/test_cluster.py).
    a, b, c = "a", "a43601", "a46173"
    spans = [(a, b), (b, c), (c, a), (a, b, c)]
    rounds = 40
    handles = [open_handle() for _ in spans]
    batches = {
        (p, r): [make_message(queue=q, key=f"k{r}", payload=f"[[{p}],{{}}]".encode()) for q in span]
        for p, span in enumerate(spans)
        for r in range(rounds)
    }
    outcomes: dict[tuple[int, int], list[Enqueued] | None] = {}
    start = threading.Barrier(len(spans))
    failures: list[BaseException] = []

    def produce(p: int) -> None:
        try:
            for r in range(rounds):
                start.wait(timeout=30)
                try:
                    outcomes[p, r] = handles[p].enqueue(batches[p, r], now=t0)
                except KeyConflict:
                    outcomes[p, r] = None
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)
            start.abort()

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(len(spans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []

    check = handles[0]
    refused = 0
    for (p, r), out in outcomes.items():
        batch = batches[p, r]
        if out is None:
            refused += 1
            stored = [m.queue for m in batch if check.get(m.id, now=t0) is not None]
            assert stored == [], f"round {r}: producer {p}'s refused batch left jobs in {stored}"
        else:
            for m, e in zip(batch, out, strict=True):
                holder = check.get(e.id, now=t0)
                assert holder is not None and holder.queue == m.queue and holder.key == m.key
                assert holder.payload == m.payload, f"round {r}: producer {p} got another's job"
    assert refused > 0  # producers did race for the keys
