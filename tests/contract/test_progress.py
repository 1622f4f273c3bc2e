"""Progress of running jobs (docs/hooks.md): stored fenced by the run's token, read by ``get``."""

from __future__ import annotations

from conveyor.progress import encode
from conveyor.records import Progress

from .helpers import enqueue, info, make_message, reserve_one, retried, succeeded


def test_progress_of_a_running_job_is_stored_and_read(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    assert info(broker, m.id, now=t0).progress is None
    d = reserve_one(broker, now=t0)

    assert broker.set_progress([(d.id, d.token, encode(Progress(0.25, "a quarter")))], now=t0) == 1
    assert info(broker, m.id, now=t0).progress == Progress(0.25, "a quarter")
    assert broker.set_progress([(d.id, d.token, encode(Progress(0.5)))], now=t0) == 1
    assert info(broker, m.id, now=t0).progress == Progress(0.5, None)


def test_progress_is_fenced_by_the_token_and_the_state(broker, t0):
    waiting, m = make_message(), make_message()
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)
    enqueue(broker, t0, waiting)

    stale = [(d.id, d.token + 1, encode(Progress(0.9)))]
    assert broker.set_progress(stale, now=t0) == 0
    assert broker.set_progress([(waiting.id, 0, encode(Progress(0.9)))], now=t0) == 0
    assert broker.set_progress([("nope", 1, encode(Progress(0.9)))], now=t0) == 0
    assert info(broker, m.id, now=t0).progress is None
    assert info(broker, waiting.id, now=t0).progress is None

    broker.set_progress([(d.id, d.token, encode(Progress(0.4, "x")))], now=t0)
    broker.ack([succeeded(d)], now=t0)
    assert broker.set_progress([(d.id, d.token, encode(Progress(1.0, "late")))], now=t0) == 0
    assert info(broker, m.id, now=t0).progress == Progress(0.4, "x")


def test_a_batch_of_reports_over_jobs_of_several_queues(broker, t0):
    a, b = make_message(queue="qa"), make_message(queue="qb", key="k")
    enqueue(broker, t0, a)
    enqueue(broker, t0, b)
    da, db = reserve_one(broker, now=t0, queues=["qa"]), reserve_one(broker, now=t0, queues=["qb"])

    stored = broker.set_progress(
        [(da.id, da.token, encode(Progress(0.1, "é☃"))), (db.id, db.token, encode(Progress(1.0)))], now=t0
    )

    assert stored == 2
    assert info(broker, a.id, now=t0).progress == Progress(0.1, "é☃")
    assert info(broker, b.id, now=t0).progress == Progress(1.0)


def test_a_retried_job_keeps_its_last_progress_until_it_reports_again(broker, t0):
    m = make_message()
    enqueue(broker, t0, m)
    d = reserve_one(broker, now=t0)
    broker.set_progress([(d.id, d.token, encode(Progress(0.7, "failed here")))], now=t0)
    broker.ack([retried(d)], now=t0)

    again = reserve_one(broker, now=t0 + 1)
    assert info(broker, m.id, now=t0 + 1).progress == Progress(0.7, "failed here")
    broker.set_progress([(again.id, again.token, encode(Progress(0.1)))], now=t0 + 1)
    assert info(broker, m.id, now=t0 + 1).progress == Progress(0.1)
