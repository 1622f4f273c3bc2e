"""Limits hold when several broker handles reserve and acknowledge at once (docs/flow-control.md).

Each thread has a broker of its own (its own connections, as a worker process would), reserving
on the store's clock and acknowledging what it reserved one round later, so leases overlap.
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec

from conveyor.brokers.postgres import PostgresBroker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Delivery, Message, Outcome, Rule

THREADS = 4
JOBS = 160
SLOTS = Rule(key="slots", concurrency=3)
RATE = Rule(key="api", rate=200.0, burst=5)


def message(*rules: Rule) -> Message:
    return Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[]", limits=rules)


def test_concurrent_reservers_never_exceed_the_concurrency_nor_the_rate(store_url: str) -> None:
    setup = PostgresBroker(store_url)
    # Two groups sharing both keys, so claimers lock keys that several groups name.
    setup.enqueue([message(SLOTS, RATE) for _ in range(JOBS // 2)])
    setup.enqueue(
        [message(SLOTS, RATE, Rule(key="tenant:b", rate=1000.0, burst=10)) for _ in range(JOBS // 2)]
    )
    lock = threading.Lock()
    running = 0
    peak = 0
    acked: list[str] = []
    failures: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(n: int) -> None:
        nonlocal running, peak
        broker = PostgresBroker(store_url)
        fairness = Fairness((6, 3, 1))
        held: list[Delivery] = []
        try:
            start.wait()
            while True:
                with lock:
                    if len(acked) >= JOBS:
                        break
                got = broker.reserve(["q"], 2, 30.0, f"w{n}", fairness)
                with lock:  # after the store claimed them: never more than the store counts
                    running += len(got)
                    peak = max(peak, running)
                if held:
                    with lock:  # before the store frees them: never fewer than it counts
                        running -= len(held)
                        acked.extend(d.id for d in held)
                    statuses = broker.ack([Outcome(d.id, d.token, "succeeded", result=b"null") for d in held])
                    assert [s.status for s in statuses] == ["ok"] * len(held)
                held = got
                if not got and not held:
                    broker.wait(["q"], 0.5)
        except BaseException as exc:
            failures.append(exc)
        finally:
            if held:
                broker.ack([Outcome(d.id, d.token, "succeeded", result=b"null") for d in held])
            broker.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not failures, failures
        assert sorted(acked) == sorted(set(acked)) and len(acked) == JOBS
        assert peak <= SLOTS.concurrency, peak
        # Every start, on the store's clock (stamped by the claim), within rate * window + burst.
        starts = sorted(info.started_at for info in setup.jobs(queue="q", state="succeeded", limit=JOBS))
        assert len(starts) == JOBS
        for i, first in enumerate(starts):
            for j in range(i, len(starts)):
                window = starts[j] - first
                assert j - i + 1 <= RATE.rate * window + RATE.burst + 1e-6, (i, j, window)
        # Every slot came back (a key with nothing running, queued or throttled is not listed).
        assert {i.key: i.running for i in setup.limits("q")}.get("slots", 0) == 0
    finally:
        setup.close()


def test_corrupt_rules_and_held_cost_only_their_record(store_url: str, admin: Any) -> None:
    broker = PostgresBroker(store_url)
    try:
        bad, good = message(SLOTS), message(Rule(key="other", concurrency=1))
        plain = msgspec.structs.replace(message(), limits=())
        broker.enqueue([bad, good, plain])
        schema = store_url.split("schema=")[1]
        admin.execute(f'UPDATE "{schema}".limit_groups SET rules = \'"garbage"\' WHERE grp = %s', ["slots"])
        admin.execute(f'UPDATE "{schema}".jobs SET rules = \'{{"x": 1}}\' WHERE id = %s', [bad.id])

        got = broker.reserve(["q"], 10, 30.0, "w", Fairness((6, 3, 1)))

        assert {d.id for d in got} == {bad.id, good.id, plain.id}  # the bad group runs unlimited
        admin.execute(f"UPDATE \"{schema}\".jobs SET held = '[1, [2], {{}}]' WHERE id = %s", [bad.id])
        statuses = broker.ack([Outcome(d.id, d.token, "succeeded", result=b"null") for d in got])
        assert [s.status for s in statuses] == ["ok"] * 3
        assert {i.key: i.running for i in broker.limits("q")}.get("other", 0) == 0
    finally:
        broker.close()


def test_mixed_outcomes_and_run_time_changes_under_concurrency_free_every_slot(store_url: str) -> None:
    """Claimers acknowledging every kind of outcome at once (several kinds per batch, some with
    effects) and releasing, while another handle changes a limit, reclaims and sweeps idle limit
    state: no deadlock, no lost job, no slot kept."""
    setup = PostgresBroker(store_url)
    messages = []
    for i in range(300):
        rules: tuple[Rule, ...] = (Rule("shared", concurrency=4), Rule(f"t:{i % 7}", rate=500.0, burst=3))
        if i % 3 == 0:
            rules = (Rule(f"t:{i % 7}", concurrency=2),)
        if i % 5 == 0:
            rules = ()
        queue = "ab"[i % 2]
        messages.append(
            Message(
                id=new_id(),
                task="t",
                queue=queue,
                priority=i % 3,
                payload=b"[]",
                limits=rules,
                max_attempts=50,
            )
        )
    setup.enqueue(messages)
    setup.set_limit("a", Rule("", concurrency=6))
    lock = threading.Lock()
    finished: set[str] = set()
    failures: list[BaseException] = []
    stop = threading.Event()

    def work(n: int) -> None:
        broker = PostgresBroker(store_url)
        fairness = Fairness((6, 3, 1))
        kinds = ["succeeded", "effects", "retry", "throttled", "release", "dead", "effects"]
        try:
            turn = n
            while not stop.is_set():
                got = broker.reserve(["a", "b"], 5, 30.0, f"w{n}", fairness)
                outcomes, released = [], []
                for d in got:
                    kind = kinds[turn % len(kinds)]
                    turn += 1
                    if kind == "release":
                        released.append((d.id, d.token))
                    elif kind == "effects":  # settled in a transaction of several statements
                        outcomes.append(
                            Outcome(d.id, d.token, "succeeded", result=b"null", effects=(("SELECT 1",),))
                        )
                    else:
                        delay = 0.01 if kind in ("retry", "throttled") else 0.0
                        outcomes.append(
                            Outcome(d.id, d.token, kind, result=b"null", delay=delay, error={"type": "E"})
                        )  # type: ignore[arg-type]
                assert [s.status for s in broker.ack(outcomes)] == ["ok"] * len(outcomes)
                assert broker.release(released) == len(released)
                with lock:
                    finished.update(o.id for o in outcomes if o.kind in ("succeeded", "dead"))
                    if len(finished) == len(messages):
                        stop.set()
                if not got:
                    broker.wait(["a", "b"], 0.2)
        except BaseException as exc:
            failures.append(exc)
            stop.set()
        finally:
            broker.close()

    def change() -> None:
        broker = PostgresBroker(store_url)
        try:
            n = 0
            while not stop.is_set():
                broker.set_limit("b", Rule("shared", concurrency=1 + n % 5))
                broker.reclaim()
                broker.expire()  # deletes groups and keys at rest under the claims and outcomes
                broker.clear_limit("b", "shared")
                n += 1
        except BaseException as exc:
            failures.append(exc)
            stop.set()
        finally:
            broker.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(5)] + [threading.Thread(target=change)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not failures, failures
        assert len(finished) == len(messages)
        assert [(i.queue, i.key, i.running) for i in setup.limits() if i.running] == []
    finally:
        setup.close()


def test_outcomes_that_put_jobs_back_into_groups_do_not_deadlock_with_claims(store_url: str) -> None:
    """Outcomes settled in a transaction (effects) that free slots and then put jobs back into
    groups (retries whose group row a claim deleted, follow-up enqueues with limits) must take
    the group rows before the keys, as claims do: a claim holding a group while it waits for a
    key, and an outcome holding that key while it waits for the group, would deadlock."""
    keys = [Rule(f"k{i}", rate=1e6, burst=1000, concurrency=1000) for i in range(3)]
    shared = Rule("shared", concurrency=1000)

    def job(i: int) -> Message:
        return Message(
            id=new_id(),
            task="t",
            queue="q",
            priority=1,
            payload=b"[]",
            limits=(shared, keys[i % 3]),
            max_attempts=1000,
        )

    setup = PostgresBroker(store_url)
    setup.enqueue([job(i) for i in range(60)])
    lock = threading.Lock()
    spawned = 0
    finished: set[str] = set()
    failures: list[BaseException] = []
    stop = threading.Event()
    total = 400  # jobs in all: 60 first, the rest follow-ups

    def work(n: int) -> None:
        nonlocal spawned
        broker = PostgresBroker(store_url)
        fairness = Fairness((6, 3, 1))
        turn = n
        try:
            while not stop.is_set():
                got = broker.reserve(["q"], 3, 30.0, f"w{n}", fairness)
                outcomes = []
                for d in got:
                    turn += 1
                    if turn % 3 == 0:
                        outcomes.append(Outcome(d.id, d.token, "retry", delay=0.0, error={"type": "E"}))
                        continue
                    follow: tuple[Message, ...] = ()
                    with lock:
                        if spawned < total - 60:
                            spawned += 1
                            follow = (job(turn),)
                    outcomes.append(
                        Outcome(
                            d.id,
                            d.token,
                            "succeeded",
                            result=b"null",
                            effects=(("SELECT 1",),),
                            enqueues=follow,
                        )
                    )
                statuses = broker.ack(outcomes)
                assert [s.status for s in statuses] == ["ok"] * len(outcomes), statuses
                with lock:
                    finished.update(o.id for o in outcomes if o.kind == "succeeded")
                    if len(finished) >= total:
                        stop.set()
                if not got:
                    broker.wait(["q"], 0.2)
        except BaseException as exc:
            failures.append(exc)
            stop.set()
        finally:
            broker.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not failures, failures
        assert len(finished) == total
        assert [(i.key, i.running) for i in setup.limits("q") if i.running] == []
    finally:
        setup.close()
