"""The dead letter queue: list, replay, purge."""

from __future__ import annotations

import pytest

from conveyor.errors import KeyConflict

from .helpers import (
    buried,
    counts,
    enqueue,
    error,
    info,
    make_message,
    reserve,
    reserve_one,
    retried,
    statuses,
    succeeded,
)


def bury(broker, now, message) -> str:
    """Enqueue ``message``, run it once and move it to the dead letter queue at ``now``."""
    enqueue(broker, now, message)
    d = reserve_one(broker, now=now, queues=[message.queue])
    assert d.id == message.id
    assert statuses(broker, [buried(d)], now=now) == ["ok"]
    return message.id


def test_dead_lists_newest_first(broker, t0):
    a = bury(broker, t0 + 1, make_message())
    b = bury(broker, t0 + 2, make_message())
    c = bury(broker, t0 + 3, make_message())

    assert [j.id for j in broker.dead()] == [c, b, a]


def test_dead_filters_by_queue_and_task(broker, t0):
    mail_send = bury(broker, t0 + 1, make_message(queue="mail", task="send"))
    mail_bounce = bury(broker, t0 + 2, make_message(queue="mail", task="bounce"))
    web_send = bury(broker, t0 + 3, make_message(queue="web", task="send"))

    assert [j.id for j in broker.dead(queue="mail")] == [mail_bounce, mail_send]
    assert [j.id for j in broker.dead(task="send")] == [web_send, mail_send]
    assert [j.id for j in broker.dead(queue="mail", task="send")] == [mail_send]
    assert broker.dead(queue="nowhere") == []


def test_dead_pages_with_limit_and_offset(broker, t0):
    ids = [bury(broker, t0 + n, make_message()) for n in range(5)]
    newest_first = ids[::-1]

    assert [j.id for j in broker.dead(limit=2)] == newest_first[:2]
    assert [j.id for j in broker.dead(limit=2, offset=2)] == newest_first[2:4]
    assert [j.id for j in broker.dead(limit=2, offset=4)] == newest_first[4:]
    assert broker.dead(limit=2, offset=5) == []


def test_dead_lists_only_dead_jobs(broker, t0):
    dead = bury(broker, t0, make_message())
    enqueue(broker, t0, make_message(), make_message(), make_message(delay=60))
    d = reserve_one(broker, now=t0)
    statuses(broker, [succeeded(d)], now=t0)
    reserve_one(broker, now=t0)

    got = broker.dead()

    assert [j.id for j in got] == [dead]
    assert got[0].state == "dead"


def test_replay_resets_attempts_and_keeps_the_history(broker, t0):
    m = make_message(max_attempts=2, payload=b"[[5],{}]")
    enqueue(broker, t0, m)
    e1, e2 = error(1, message="one"), error(2, message="two")
    statuses(broker, [retried(reserve_one(broker, now=t0), err=e1)], now=t0)
    statuses(broker, [buried(reserve_one(broker, now=t0 + 1), err=e2)], now=t0 + 1)

    assert broker.replay([m.id], now=t0 + 10) == 1

    job = info(broker, m.id, now=t0 + 10)
    assert job.state == "ready"
    assert job.errors == [e1, e2]
    assert broker.dead() == []
    d = reserve_one(broker, now=t0 + 10)
    assert (d.id, d.attempt, d.payload) == (m.id, 1, b"[[5],{}]")


def test_replay_of_some_ids(broker, t0):
    a = bury(broker, t0, make_message())
    b = bury(broker, t0 + 1, make_message())

    assert broker.replay([a], now=t0 + 2) == 1

    assert info(broker, a, now=t0 + 2).state == "ready"
    assert info(broker, b, now=t0 + 2).state == "dead"


def test_replay_none_replays_every_dead_job(broker, t0):
    ids = [bury(broker, t0 + n, make_message(queue=f"q{n}")) for n in range(3)]

    assert broker.replay(None, now=t0 + 10) == 3

    assert [info(broker, i, now=t0 + 10).state for i in ids] == ["ready"] * 3
    assert broker.dead() == []


def test_replay_into_another_queue(broker, t0):
    m = bury(broker, t0, make_message(queue="q"))

    assert broker.replay([m], queue="repair", now=t0 + 1) == 1

    assert info(broker, m, now=t0 + 1).queue == "repair"
    assert reserve(broker, now=t0 + 1, queues=["q"]) == []
    d = reserve_one(broker, now=t0 + 1, queues=["repair"])
    assert (d.id, d.queue, d.attempt) == (m, "repair", 1)


def test_replay_into_a_queue_where_its_key_is_taken_is_a_key_conflict(broker, t0):
    dead = bury(broker, t0, make_message(queue="q", key="k"))
    (holder,) = enqueue(broker, t0, make_message(queue="other", key="k"))

    with pytest.raises(KeyConflict):
        broker.replay([dead], queue="other", now=t0 + 1)

    assert info(broker, dead, now=t0 + 1).state == "dead"
    assert info(broker, holder, now=t0 + 1).state == "ready"


def test_replay_ignores_jobs_that_are_not_dead(broker, t0):
    ready, running = make_message(), make_message()
    enqueue(broker, t0, running)
    d = reserve_one(broker, now=t0)
    enqueue(broker, t0, ready)

    assert broker.replay([ready.id, running.id], now=t0 + 1) == 0
    assert broker.replay(None, now=t0 + 1) == 0

    job = info(broker, running.id, now=t0 + 1)
    assert (job.state, job.attempt) == ("running", 1)
    assert statuses(broker, [succeeded(d)], now=t0 + 2) == ["ok"]


def test_purge_deletes_only_the_given_dead_jobs(broker, t0):
    a = bury(broker, t0, make_message())
    b = bury(broker, t0 + 1, make_message())
    (ready,) = enqueue(broker, t0, make_message())

    assert broker.purge([a, ready]) == 1

    assert broker.get(a, now=t0 + 2) is None
    assert info(broker, b, now=t0 + 2).state == "dead"
    assert info(broker, ready, now=t0 + 2).state == "ready"


def test_purge_none_deletes_every_dead_job_and_nothing_else(broker, t0):
    dead = [bury(broker, t0 + n, make_message()) for n in range(3)]
    enqueue(broker, t0, make_message(), make_message(), make_message(delay=60))
    statuses(broker, [succeeded(reserve_one(broker, now=t0))], now=t0)
    reserve_one(broker, now=t0)
    before = counts(broker, "q", now=t0)

    assert broker.purge(None) == 3

    assert [broker.get(i, now=t0) for i in dead] == [None] * 3
    assert broker.dead() == []
    assert counts(broker, "q", now=t0) == {s: c for s, c in before.items() if s != "dead"}
