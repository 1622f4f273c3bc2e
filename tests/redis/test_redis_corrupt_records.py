"""One corrupt job record on Redis costs that record, never another job nor a listing (issue 26,
finding 2): a task name that is not UTF-8."""

from __future__ import annotations

import time

from conveyor import Conveyor
from conveyor.brokers.redis.url import parse


def _corrupt(admin, url: str, queue: str, job_id: str, old: bytes, new: bytes) -> None:
    """Rewrite bytes of a job's stored record in place (the record is MessagePack)."""
    key = f"{parse(url).prefix}:{{{queue}}}:jobs"
    record = admin.hget(key, job_id)
    assert old in record
    admin.hset(key, job_id, record.replace(old, new, 1))


def _wait_dead(app: Conveyor, job_id: str) -> None:
    deadline = time.monotonic() + 10
    while (info := app.broker.get(job_id)) is None or info.state != "dead":
        assert time.monotonic() < deadline, f"job {job_id} did not end dead: {info}"
        time.sleep(0.02)


def test_a_task_name_that_is_not_text_costs_only_its_job(store_url, admin, run_worker) -> None:
    app = Conveyor(store_url)
    done: list[int] = []

    @app.task(name="work")
    def work(n: int) -> None:
        done.append(n)

    good = [work.message(n, queue="a") for n in range(5)]
    bad = work.message(99, queue="b")
    app.enqueue_many([*good, bad])
    _corrupt(admin, store_url, "b", bad.id, b"\xa4work", b"\xa4\xff\xfe\xfd\xfc")
    with run_worker(app, queues=["a", "b"], concurrency=8):
        for m in good:
            app.job(m.id).result(timeout=10)
        _wait_dead(app, bad.id)
    assert sorted(done) == list(range(5))
    (dead,) = app.broker.dead()
    assert dead.id == bad.id and dead.errors[-1]["type"] == "UnknownTask"
    assert len(app.broker.jobs(limit=10)) == 6
    app.close()
