"""Idempotency keys: what counts as the same call, how long dead jobs hold a key, and batches
that span queues under concurrent producers."""

from __future__ import annotations

import threading
from collections.abc import Callable

from conveyor.brokers import Broker
from conveyor.errors import KeyConflict
from conveyor.records import Enqueued

from .helpers import make_message


def test_racing_producers_store_all_or_nothing_of_batches_spanning_queues(
    open_handle: Callable[[], Broker], t0: float
) -> None:
    """Each round, every producer sends one batch holding the round's key in several queues,
    with a payload of its own: the queues overlap between producers but differ, so a producer
    can lose the key in one queue to a batch that does not touch another. A batch refused with
    KeyConflict must leave nothing stored; one accepted must own or share the key everywhere."""
    spans = [("a", "b"), ("b", "c"), ("c", "a"), ("a", "b", "c")]
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
