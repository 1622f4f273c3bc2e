"""Tasks run through a real worker: results, retries, the dead letter queue, bad input."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from conveyor import Conveyor, JobCancelled, JobFailed, Retry, RetryPolicy, current_job
from conveyor.ids import new_id
from conveyor.records import Message

FAST = RetryPolicy(max_attempts=3, base=0.01, max_delay=0.05)


def test_sync_and_async_tasks_return_results(app: Conveyor, run_worker) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    async def greet(name: str) -> str:
        await asyncio.sleep(0.001)
        return f"hello {name}"

    with run_worker(app):
        assert add.enqueue(2, 3).result(timeout=10) == 5
        assert greet.enqueue(name="ada").result(timeout=10) == "hello ada"


def test_async_enqueue_and_result(app: Conveyor, run_worker) -> None:
    @app.task
    def double(x: int) -> int:
        return 2 * x

    async def produce() -> list[int]:
        jobs = [await double.enqueue_async(i) for i in range(5)]
        jobs += await app.enqueue_many_async([double.message(10)])
        return [await j.result_async(timeout=10) for j in jobs]

    with run_worker(app):
        assert asyncio.run(produce()) == [0, 2, 4, 6, 8, 20]


def test_fails_twice_then_succeeds(app: Conveyor, run_worker) -> None:
    @app.task(retry=RetryPolicy(max_attempts=5, base=0.01, max_delay=0.02))
    def flaky() -> int:
        if current_job().attempt < 3:
            raise ConnectionError("try again")
        return current_job().attempt

    with run_worker(app):
        job = flaky.enqueue()
        assert job.result(timeout=10) == 3
    info = job.info()
    assert info.attempt == 3
    assert [e["type"] for e in info.errors] == ["ConnectionError", "ConnectionError"]


def test_always_failing_task_is_dead_with_every_error(app: Conveyor, run_worker) -> None:
    @app.task(retry=FAST)
    def broken(n: int) -> None:
        raise ValueError(f"bad input {n}")

    with run_worker(app, worker_id="w-test"):
        job = broken.enqueue(7)
        with pytest.raises(JobFailed) as failed:
            job.result(timeout=10)
    assert job.status() == "dead"
    errors = failed.value.errors
    assert [e["attempt"] for e in errors] == [1, 2, 3]
    for e in errors:
        assert e["type"] == "ValueError"
        assert e["message"] == "bad input 7"
        assert "raise ValueError" in e["traceback"]
        assert e["worker"] == "w-test"
        assert e["at"] > 0
    assert [d.id for d in app.broker.dead()] == [job.id]


def test_gaps_between_attempts_follow_the_policy_within_its_jitter(app: Conveyor, run_worker) -> None:
    """Attempt n+1 starts between half and all of the policy's n-th delay after attempt n failed
    (equal jitter), plus a little scheduling slack; the DLQ then holds exactly the failed set."""
    policy = RetryPolicy(max_attempts=5, base=0.1, factor=2, max_delay=0.5, jitter="equal")

    @app.task(retry=policy)
    def broken(n: int) -> None:
        raise ValueError(f"bad input {n}")

    @app.task
    def fine() -> str:
        return "ok"

    with run_worker(app):
        failing = [broken.enqueue(n) for n in range(4)]
        good = [fine.enqueue() for _ in range(10)]
        for job in failing:
            with pytest.raises(JobFailed):
                job.result(timeout=30)
        assert all(j.result(timeout=10) == "ok" for j in good)
    assert sorted(d.id for d in app.broker.dead()) == sorted(j.id for j in failing)
    for job in failing:
        info = job.info()
        assert len(info.errors) == 5
        for n in range(1, 5):
            nominal = min(policy.max_delay, policy.base * policy.factor ** (n - 1))
            gap = info.errors[n]["at"] - info.errors[n - 1]["at"]
            assert nominal / 2 - 0.005 <= gap <= nominal + 1.0, (n, gap, nominal)  # never early


def test_give_up_on_goes_straight_to_the_dlq(app: Conveyor, run_worker) -> None:
    @app.task(retry=RetryPolicy(max_attempts=5, base=0.01, give_up_on=(KeyError,)))
    def lookup() -> None:
        raise KeyError("missing")

    with run_worker(app):
        job = lookup.enqueue()
        with pytest.raises(JobFailed):
            job.result(timeout=10)
    assert job.info().attempt == 1


def test_retry_exception_chooses_the_delay(app: Conveyor, run_worker) -> None:
    @app.task(retry=RetryPolicy(max_attempts=3, base=60))
    def polite() -> str:
        if current_job().attempt == 1:
            raise Retry(delay=0.05)
        return "done"

    with run_worker(app):
        job = polite.enqueue()
        assert job.result(timeout=10) == "done"  # a base of 60 s would have timed out
    info = job.info()
    assert info.errors[0]["type"] == "Retry"
    assert info.started_at is not None and info.started_at >= info.run_at


def test_unknown_task_is_dead_and_the_worker_keeps_serving(app: Conveyor, run_worker, tmp_path) -> None:
    producer = Conveyor(app.url)

    @producer.task(name="not.registered.here")
    def ghost() -> None: ...

    @app.task
    def alive() -> str:
        return "ok"

    with run_worker(app, unknown_task_window=0):  # the window: tests/worker/test_unknown_tasks.py
        job = ghost.enqueue()
        with pytest.raises(JobFailed, match="unknown task"):
            job.result(timeout=10)
        assert alive.enqueue().result(timeout=10) == "ok"
    assert job.info().errors[0]["type"] == "UnknownTask"
    assert job.info().attempt == 1


@pytest.mark.parametrize("payload", [b"\xff\xfe not json", b"[1, 2, 3]", b'{"a": 1}', b"[[], {}] trailing"])
def test_undecodable_payload_is_dead_never_run(app: Conveyor, run_worker, payload: bytes) -> None:
    calls: list[object] = []

    @app.task(name="victim")
    def victim(*args: object) -> None:
        calls.append(args)

    with run_worker(app):
        raw = Message(id=new_id(), task="victim", queue="default", priority=1, payload=payload)
        app.broker.enqueue([raw])
        with pytest.raises(JobFailed):
            app.job(raw.id).result(timeout=10)
        assert victim.enqueue(1).result(timeout=10) is None
    assert calls == [(1,)]
    info = app.job(raw.id).info()
    assert info.errors[0]["type"] == "MalformedPayload"
    assert len(info.errors) == 1


def test_unserializable_return_value_fails_clearly(app: Conveyor, run_worker) -> None:
    @app.task
    def returns_set() -> object:  # a set[int] annotation would carry it (see test_typed_execution.py)
        return {1, 2}

    with run_worker(app):
        job = returns_set.enqueue()
        with pytest.raises(JobFailed, match="not JSON-serializable"):
            job.result(timeout=10)


def test_sync_timeout_stops_the_attempt(app: Conveyor, run_worker) -> None:
    @app.task(timeout=0.2, retry=RetryPolicy(max_attempts=2, base=0.01))
    def spin() -> None:
        while True:  # pure Python: the injected timeout interrupts it
            time.sleep(0.01)

    with run_worker(app):
        job = spin.enqueue()
        with pytest.raises(JobFailed):
            job.result(timeout=10)
    assert [e["type"] for e in job.info().errors] == ["TaskTimeout", "TaskTimeout"]


def test_a_thread_stuck_past_its_timeout_does_not_hold_up_the_next_task(app: Conveyor, run_worker) -> None:
    """A timed-out call blocked in C cannot be interrupted; with one slot, the next task must get
    a new thread rather than wait behind it."""
    release = threading.Event()

    @app.task(timeout=0.2, retry=RetryPolicy(max_attempts=1))
    def stuck() -> None:
        release.wait()  # a blocking lock acquire: the injected TaskTimeout lands only after it

    @app.task
    def after() -> str:
        return "ran"

    try:
        with run_worker(app, concurrency=1):
            first = stuck.enqueue()
            with pytest.raises(JobFailed, match="timeout"):
                first.result(timeout=10)
            assert after.enqueue().result(timeout=10) == "ran"  # while the first call still blocks
            assert not release.is_set()
    finally:
        release.set()


def test_async_timeout(app: Conveyor, run_worker) -> None:
    @app.task(timeout=0.1, retry=RetryPolicy(max_attempts=1))
    async def slow() -> None:
        await asyncio.sleep(30)

    with run_worker(app):
        job = slow.enqueue()
        with pytest.raises(JobFailed, match="timeout"):
            job.result(timeout=10)


def test_cancelled_job_never_runs(app: Conveyor, run_worker) -> None:
    ran = threading.Event()

    @app.task
    def later() -> None:
        ran.set()

    job = later.enqueue(delay=0.3)
    assert job.cancel() == "cancelled"
    with run_worker(app):
        with pytest.raises(JobCancelled):
            job.result(timeout=5)
        time.sleep(0.5)  # past the due time: a cancelled job must still not run
    assert not ran.is_set()
    assert job.status() == "cancelled"
    assert job.cancel() == "finished"


def test_result_is_kept_for_the_retention_then_expires(tmp_path, run_worker) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/ttl.db", retention=0.2)

    @app.task
    def value() -> int:
        return 42

    with run_worker(app):
        job = value.enqueue(key="once")
        assert job.result(timeout=10) == 42
        assert value.enqueue(key="once").id == job.id  # deduplicated while kept
    assert app.broker.expire(now=time.time() + 1) == 1
    assert app.broker.get(job.id) is None
    assert value.enqueue(key="once").id != job.id
    app.close()


def _ledger(app: Conveyor) -> sqlite3.Connection:
    conn = sqlite3.connect(app.url.removeprefix("sqlite:///"))
    conn.execute("CREATE TABLE IF NOT EXISTS ledger (k TEXT, v INTEGER)")
    conn.commit()
    return conn


def test_effects_commit_with_the_ack_and_only_on_success(app: Conveyor, run_worker) -> None:
    conn = _ledger(app)

    @app.task(retry=RetryPolicy(max_attempts=2, base=0.01))
    def record(k: str, fail: bool) -> None:
        current_job().execute("INSERT INTO ledger (k, v) VALUES (?, ?)", (k, current_job().attempt))
        if fail:
            raise RuntimeError("after writing")

    with run_worker(app):
        ok = record.enqueue("ok", False)
        bad = record.enqueue("bad", True)
        ok.result(timeout=10)
        with pytest.raises(JobFailed):
            bad.result(timeout=10)
    assert conn.execute("SELECT k, v FROM ledger").fetchall() == [("ok", 1)]


def test_failing_effect_fails_the_attempt(app: Conveyor, run_worker) -> None:
    @app.task(retry=RetryPolicy(max_attempts=2, base=0.01))
    def bad_sql() -> None:
        current_job().execute("INSERT INTO no_such_table VALUES (1)")

    with run_worker(app):
        job = bad_sql.enqueue()
        with pytest.raises(JobFailed):
            job.result(timeout=10)
    errors = job.info().errors
    assert [e["type"] for e in errors] == ["EffectsFailed", "EffectsFailed"]
    assert "no_such_table" in errors[0]["message"]


def test_follow_up_enqueue_happens_only_if_the_task_succeeds(app: Conveyor, run_worker) -> None:
    @app.task
    def child(n: int) -> int:
        return n

    @app.task(retry=RetryPolicy(max_attempts=1))
    def parent(n: int, fail: bool) -> None:
        current_job().enqueue(child.message(n, key=f"child-{n}"))
        if fail:
            raise RuntimeError("no")

    with run_worker(app):
        parent.enqueue(1, False).result(timeout=10)
        with pytest.raises(JobFailed):
            parent.enqueue(2, True).result(timeout=10)
        follow = child.enqueue(1, key="child-1")
        assert not follow.created
        assert follow.result(timeout=10) == 1
    assert child.enqueue(2, key="child-2").created


def test_heartbeats_keep_a_long_task_leased(app: Conveyor, run_worker) -> None:
    @app.task
    def long_task() -> int:
        time.sleep(1.5)
        return current_job().attempt

    with run_worker(app, lease=0.4, reclaim_interval=0.1):
        job = long_task.enqueue()
        assert job.result(timeout=10) == 1
    assert job.info().errors == []


def test_graceful_stop_finishes_running_tasks(app: Conveyor, run_worker) -> None:
    started = threading.Event()

    @app.task
    def work() -> str:
        started.set()
        time.sleep(0.5)
        return "finished"

    with run_worker(app, grace=10):
        job = work.enqueue()
        assert started.wait(10)
    assert job.status() == "succeeded"
    assert job.result(timeout=0) == "finished"


def test_stop_after_grace_releases_without_counting_an_attempt(app: Conveyor, run_worker) -> None:
    started = threading.Event()

    @app.task(retry=RetryPolicy(max_attempts=1))
    def stubborn() -> None:
        started.set()
        time.sleep(3)

    with run_worker(app, grace=0.1):
        job = stubborn.enqueue()
        assert started.wait(10)
    info = job.info()
    assert info.state == "ready"
    assert info.attempt == 0
    assert info.errors == []


def test_transactional_enqueue_exists_iff_the_transaction_commits(app: Conveyor, run_worker) -> None:
    @app.task
    def ship(order: int) -> int:
        return order

    app.broker  # noqa: B018 - the schema exists before the user's connection uses it
    conn = sqlite3.connect(app.url.removeprefix("sqlite:///"), isolation_level=None)
    conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO orders VALUES (1)")
    kept = ship.enqueue(1, connection=conn)
    conn.execute("COMMIT")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO orders VALUES (2)")
    dropped = ship.enqueue(2, connection=conn)
    conn.execute("ROLLBACK")
    with run_worker(app):
        assert kept.result(timeout=10) == 1
    assert app.broker.get(dropped.id) is None
    assert conn.execute("SELECT id FROM orders").fetchall() == [(1,)]


def test_enqueue_refuses_a_task_name_the_app_does_not_know(app: Conveyor) -> None:
    from conveyor import UnknownTask

    stray = Message(id=new_id(), task="typo.send_emial", queue="default", priority=1, payload=b"[[],{}]")
    with pytest.raises(UnknownTask, match=r"typo\.send_emial"):
        app.enqueue_many([stray])
    assert app.broker.stats() == []


def test_outcomes_pending_at_stop_are_flushed_and_the_flusher_returns(app: Conveyor) -> None:
    """Regression: outcomes reported in the same tick as the stop were flushed, then the flush
    loop waited forever for a wake-up nobody sent, so a SIGTERMed worker never exited."""
    from conveyor.records import Outcome
    from conveyor.worker.loop import Worker, WorkerConfig

    @app.task
    def noop() -> None: ...

    job = noop.enqueue()
    worker = Worker(app, WorkerConfig(queues=["default"]))
    [delivery] = app.broker.reserve(["default"], 1, 30.0, worker.id, worker.fairness)
    worker._hold([delivery])
    worker.held.clear()  # leased, never started

    async def stop_with_an_outcome_pending() -> None:
        flusher = asyncio.create_task(worker._flush_loop())
        await asyncio.sleep(0)  # the flusher now waits for work
        worker._report(Outcome(delivery.id, delivery.token, "succeeded", result=b"null"))
        worker._stopped.set()
        worker._outbox_ready.set()
        await asyncio.wait_for(flusher, timeout=10)

    try:
        asyncio.run(stop_with_an_outcome_pending())
    finally:
        worker._io.shutdown(wait=True)
    assert job.status() == "succeeded"
