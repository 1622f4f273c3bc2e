"""Hooks and job headers through a real worker (docs/hooks.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from waiting import wait_for

from conveyor import (
    ConfigurationError,
    Conveyor,
    Hook,
    JobFailed,
    JobLogFilter,
    RetryPolicy,
    current_job,
    with_headers,
)
from conveyor.context import JobContext
from conveyor.records import Message

FAST = RetryPolicy(max_attempts=2, base=0.01, max_delay=0.02)


class Recorder(Hook):
    """Records every call, in order, under its name."""

    def __init__(self, name: str, calls: list[tuple[Any, ...]]) -> None:
        self.name = name
        self.calls = calls

    @contextlib.contextmanager
    def enqueue(self, messages: list[Message]) -> Iterator[list[Message]]:
        self.calls.append((self.name, "enqueue", len(messages)))
        yield [with_headers(m, **{f"by-{self.name}": "1"}) for m in messages]
        self.calls.append((self.name, "enqueued"))

    @contextlib.contextmanager
    def run(self, job: JobContext) -> Iterator[None]:
        self.calls.append((self.name, "run", job.task, job.attempt, current_job() is job))
        try:
            yield
        except BaseException as exc:
            self.calls.append((self.name, "raised", type(exc).__name__))
            raise
        self.calls.append((self.name, "ran"))

    def retry(self, job: JobContext, error: BaseException, delay: float) -> None:
        self.calls.append((self.name, "retry", job.attempt, type(error).__name__, delay > 0))

    def dead(self, job: JobContext, error: BaseException) -> None:
        self.calls.append((self.name, "dead", job.attempt, type(error).__name__))


def test_headers_reach_the_task_and_the_job_record(app: Conveyor, run_worker) -> None:
    @app.task
    def echo() -> dict[str, str]:
        return dict(current_job().headers)

    @app.task
    async def echo_async() -> dict[str, str]:
        await asyncio.sleep(0)
        return dict(current_job().headers)

    with run_worker(app):
        job = echo.enqueue(headers={"request-id": "r-1"})
        assert job.result(timeout=10) == {"request-id": "r-1"}
        assert echo_async.enqueue(headers={"a": "b"}).result(timeout=10) == {"a": "b"}
        assert echo.enqueue().result(timeout=10) == {}
    assert job.info().headers == {"request-id": "r-1"}


def test_headers_out_of_bounds_are_refused_at_enqueue(app: Conveyor) -> None:
    @app.task
    def noop() -> None: ...

    for bad, why in [
        ({"k": "v" * 2049}, "at most 2048"),
        ({"a b": "v"}, "printable ASCII"),
        ({f"k{i}": "v" for i in range(33)}, "at most 32"),
        ({f"k{i}": "v" * 200 for i in range(30)}, "at most 4096"),
        ({"k": 1}, "must be a str"),
    ]:
        with pytest.raises(ConfigurationError, match=why):
            noop.enqueue(headers=bad)
    assert app.broker.jobs(limit=10) == []


def test_hooks_wrap_enqueue_and_run_in_order(app: Conveyor, run_worker) -> None:
    calls: list[tuple[Any, ...]] = []
    app.hooks += [Recorder("outer", calls), Recorder("inner", calls)]

    @app.task
    def work() -> dict[str, str]:
        calls.append(("task",))
        return dict(current_job().headers)

    job = work.enqueue()
    assert calls == [
        ("outer", "enqueue", 1),
        ("inner", "enqueue", 1),
        ("inner", "enqueued"),
        ("outer", "enqueued"),
    ]
    calls.clear()
    with run_worker(app):
        assert job.result(timeout=10) == {"by-outer": "1", "by-inner": "1"}
    assert calls == [
        ("outer", "run", work.name, 1, True),
        ("inner", "run", work.name, 1, True),
        ("task",),
        ("inner", "ran"),
        ("outer", "ran"),
    ]


def test_an_enqueue_hook_refuses_by_raising(app: Conveyor) -> None:
    class Refuse(Hook):
        @contextlib.contextmanager
        def enqueue(self, messages: list[Message]) -> Iterator[list[Message]]:
            raise PermissionError("no enqueues today")
            yield messages  # pragma: no cover

    @app.task
    def noop() -> None: ...

    app.hooks.append(Refuse())
    with pytest.raises(PermissionError):
        app.enqueue_many([noop.message(), noop.message()])
    assert app.broker.jobs(limit=10) == []


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_retry_and_dead_hooks_run_inside_the_run_hooks(app: Conveyor, run_worker, is_async: bool) -> None:
    calls: list[tuple[Any, ...]] = []
    app.hooks.append(Recorder("h", calls))

    if is_async:

        @app.task(retry=FAST, name="fails")
        async def fails() -> None:
            raise ValueError("boom")
    else:

        @app.task(retry=FAST, name="fails")
        def fails() -> None:
            raise ValueError("boom")

    with run_worker(app):
        job = fails.enqueue()
        with pytest.raises(JobFailed):
            job.result(timeout=10)
    assert [c for c in calls if c[1] != "enqueue" and c[1] != "enqueued"] == [
        ("h", "run", "fails", 1, True),
        ("h", "retry", 1, "ValueError", True),
        ("h", "raised", "ValueError"),
        ("h", "run", "fails", 2, True),
        ("h", "dead", 2, "ValueError"),
        ("h", "raised", "ValueError"),
    ]


def test_a_failing_run_hook_fails_the_attempt(app: Conveyor, run_worker) -> None:
    class Broken(Hook):
        @contextlib.contextmanager
        def run(self, job: JobContext) -> Iterator[None]:
            yield
            raise RuntimeError("session commit failed")

    app.hooks.append(Broken())

    @app.task(retry=RetryPolicy(max_attempts=1))
    def fine() -> int:
        return 1

    with run_worker(app), pytest.raises(JobFailed) as failed:
        fine.enqueue().result(timeout=10)
    assert failed.value.errors[-1]["type"] == "RuntimeError"


def test_a_swallowed_failure_is_still_a_failure(app: Conveyor, run_worker) -> None:
    class Swallow(Hook):
        @contextlib.contextmanager
        def run(self, job: JobContext) -> Iterator[None]:
            with contextlib.suppress(Exception):
                yield

    app.hooks.append(Swallow())

    @app.task(retry=RetryPolicy(max_attempts=1))
    def fails() -> None:
        raise ValueError("boom")

    with run_worker(app), pytest.raises(JobFailed):
        fails.enqueue().result(timeout=10)


def test_errors_of_retry_and_dead_hooks_are_logged_not_fatal(app: Conveyor, run_worker, caplog) -> None:
    class Noisy(Hook):
        def dead(self, job: JobContext, error: BaseException) -> None:
            raise RuntimeError("the alerting service is down")

    app.hooks.append(Noisy())

    @app.task(retry=RetryPolicy(max_attempts=1))
    def fails() -> None:
        raise ValueError("boom")

    with (
        caplog.at_level(logging.ERROR, logger="conveyor.hooks"),
        run_worker(app),
        pytest.raises(JobFailed) as failed,
    ):
        fails.enqueue().result(timeout=10)
    assert failed.value.errors[-1]["type"] == "ValueError"
    assert "the dead hook" in caplog.text


def test_a_timed_out_sync_task_calls_its_dead_hook(app: Conveyor, run_worker) -> None:
    calls: list[tuple[Any, ...]] = []
    app.hooks.append(Recorder("h", calls))

    @app.task(timeout=0.2, retry=RetryPolicy(max_attempts=1))
    def slow() -> None:
        for _ in range(400):
            time.sleep(0.01)

    with run_worker(app):
        with pytest.raises(JobFailed):
            slow.enqueue().result(timeout=10)
        wait_for(lambda: ("h", "raised", "TaskTimeout") in calls, 10, "the interrupt to reach the hook")
    assert [c for c in calls if c[1] == "dead"] == [("h", "dead", 1, "TaskTimeout")]


def test_follow_up_enqueues_go_through_the_enqueue_hooks(app: Conveyor, run_worker) -> None:
    class Stamp(Hook):
        @contextlib.contextmanager
        def enqueue(self, messages: list[Message]) -> Iterator[list[Message]]:
            try:
                parent = current_job().id
            except LookupError:
                parent = "-"
            yield [with_headers(m, parent=parent) for m in messages]

    app.hooks.append(Stamp())

    @app.task
    def child() -> str:
        return current_job().headers["parent"]

    @app.task
    def parent() -> str:
        message = child.message()
        current_job().enqueue(message)
        return message.id

    with run_worker(app):
        first = parent.enqueue()
        child_id = first.result(timeout=10)
        assert app.job(child_id).result(timeout=10) == first.id
    assert first.info().headers == {"parent": "-"}


def test_the_log_filter_puts_the_job_on_every_line(app: Conveyor, run_worker) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.addFilter(JobLogFilter())
    handler.setFormatter(
        logging.Formatter("%(job_task)s %(job_id)s %(job_queue)s %(job_attempt)s %(message)s")
    )
    logger = logging.getLogger("tests.hooks.app")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:

        @app.task(name="logs", queue="q1")
        def logs() -> None:
            logger.info("inside")

        with run_worker(app, queues=["q1"]):
            job = logs.enqueue()
            job.result(timeout=10)
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    assert lines == [f"logs {job.id} q1 1 inside", "- - - - outside"]
