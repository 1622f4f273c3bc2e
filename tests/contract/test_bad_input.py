"""Bad input at enqueue, through the application's API on every backend: each is refused with a
typed error naming what is wrong, and nothing of it is stored (the store is checked afterwards,
not assumed untouched). The edges that are accepted (a payload of exactly the limit, a key of
exactly its length limit, a run_at in the past) are stored and claimable.

The unit suites check these refusals message by message; here they go through ``enqueue`` to a
real store."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, Job
from conveyor.app import MAX_KEY_LENGTH, Task
from conveyor.errors import (
    ArgumentError,
    ConfigurationError,
    KeyConflict,
    PayloadTooLarge,
    SerializationError,
    UnknownTask,
)
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message
from conveyor.serializer import encode_args

from .helpers import WEIGHTS

LIMIT = 4096


@pytest.fixture
def app(store_url: str) -> Iterator[Conveyor]:
    application = Conveyor(store_url, max_payload=LIMIT)
    yield application
    application.close()


@pytest.fixture
def echo(app: Conveyor) -> Task[Any, Any]:
    @app.task(name="echo", queue="q")
    def echo(*args: Any, **kwargs: Any) -> None:
        return None

    return echo


def stored(app: Conveyor) -> list[str]:
    """Ids of every job in the store, whatever its state, and the queues it reports counts for."""
    jobs = [j.id for j in app.broker.jobs(limit=1000)]
    counted = [
        s.queue for s in app.broker.stats() if any(n for per in s.counts.values() for n in per.values())
    ]
    return jobs + counted


def deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("args", "kwargs", "where"),
    [
        pytest.param(({1, 2},), {}, "argument 0", id="set"),
        pytest.param((b"raw",), {}, "argument 0", id="bytes"),
        pytest.param((1, object()), {}, "argument 1", id="object"),
        pytest.param((), {"ratio": math.nan}, "argument 'ratio'", id="nan"),
        pytest.param((), {"at": dt.datetime(2030, 1, 1)}, "argument 'at'", id="naive-datetime"),
        pytest.param((dt.datetime(2030, 1, 1, tzinfo=dt.UTC),), {}, "argument 0", id="aware-datetime"),
        pytest.param(({"k": [1, {2}]},), {}, "argument 0['k'][1]", id="nested-set"),
        pytest.param((deep(10_000),), {}, "nested deeper than", id="nested-10000-deep"),
    ],
)
def test_arguments_that_are_not_json_are_refused_and_nothing_is_stored(
    app: Conveyor, echo: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], where: str
) -> None:
    with pytest.raises(SerializationError) as refused:  # never a RecursionError or a bare TypeError
        echo.enqueue(*args, **kwargs)
    assert str(refused.value).startswith("echo: argument")
    assert where in str(refused.value)
    assert stored(app) == []


def test_arguments_that_do_not_fit_the_signature_are_refused(app: Conveyor) -> None:
    @app.task(name="add", queue="q")
    def add(a: int, b: int = 0) -> int:
        return a + b

    with pytest.raises(ArgumentError, match="add"):
        add.enqueue(1, 2, 3)
    assert stored(app) == []


def test_payload_one_byte_over_the_limit_is_refused_and_exactly_the_limit_is_stored(
    app: Conveyor, echo: Task[Any, Any]
) -> None:
    overhead = len(encode_args("echo", ("",), {}, LIMIT))
    exact = "x" * (LIMIT - overhead)
    with pytest.raises(PayloadTooLarge, match=str(LIMIT)):
        echo.enqueue(exact + "x")
    assert stored(app) == []

    job = echo.enqueue(exact)
    info = job.info()
    assert len(info.payload) == LIMIT
    assert info.payload == encode_args("echo", (exact,), {}, LIMIT)
    assert stored(app) == [job.id, "q"]


@pytest.mark.parametrize("delay", [-1, -0.001, math.nan, math.inf, "5"])
def test_an_invalid_delay_is_refused_and_nothing_is_stored(
    app: Conveyor, echo: Task[Any, Any], delay: Any
) -> None:
    with pytest.raises(ConfigurationError, match="delay"):
        echo.enqueue(1, delay=delay)
    assert stored(app) == []


@pytest.mark.parametrize("run_at", [math.nan, -math.inf, dt.datetime(2030, 1, 1)])
def test_an_invalid_run_at_is_refused_and_nothing_is_stored(
    app: Conveyor, echo: Task[Any, Any], run_at: Any
) -> None:
    with pytest.raises(ConfigurationError, match="run_at"):
        echo.enqueue(1, run_at=run_at)
    assert stored(app) == []


@pytest.mark.parametrize("priority", ["urgent", "", 3, -1, True, 1.0, None.__class__])
def test_an_invalid_priority_is_refused_and_nothing_is_stored(
    app: Conveyor, echo: Task[Any, Any], priority: Any
) -> None:
    with pytest.raises(ConfigurationError):
        echo.enqueue(1, priority=priority)
    assert stored(app) == []


@pytest.mark.parametrize("queue", ["", "has space", "default\n", "x" * 129])
def test_an_invalid_queue_is_refused_and_nothing_is_stored(
    app: Conveyor, echo: Task[Any, Any], queue: str
) -> None:
    with pytest.raises(ConfigurationError, match="queue"):
        echo.enqueue(1, queue=queue)
    assert stored(app) == []


def test_a_key_over_its_length_limit_is_refused_and_one_at_the_limit_is_stored(
    app: Conveyor, echo: Task[Any, Any]
) -> None:
    with pytest.raises(ConfigurationError, match="key"):
        echo.enqueue(1, key="k" * (MAX_KEY_LENGTH + 1))
    assert stored(app) == []

    job = echo.enqueue(1, key="k" * MAX_KEY_LENGTH)
    assert job.info().key == "k" * MAX_KEY_LENGTH
    assert echo.enqueue(1, key="k" * MAX_KEY_LENGTH) == job


def test_an_unknown_task_name_is_refused_and_nothing_of_its_batch_is_stored(
    app: Conveyor, echo: Task[Any, Any]
) -> None:
    known = echo.message(1)
    stray = Message(id=new_id(), task="typo.echoo", queue="q", priority=1, payload=b"[[],{}]")
    with pytest.raises(UnknownTask, match=r"typo\.echoo"):
        app.enqueue_many([known, stray])
    assert stored(app) == []


def test_the_same_key_with_a_different_payload_raises_key_conflict_and_stores_nothing_of_the_batch(
    app: Conveyor, echo: Task[Any, Any]
) -> None:
    first = echo.enqueue(42, key="order-42")
    assert echo.enqueue(42, key="order-42") == first  # same payload: the same job

    with pytest.raises(KeyConflict):
        echo.enqueue(43, key="order-42")
    fresh = echo.message(7, key="fresh")
    with pytest.raises(KeyConflict):
        app.enqueue_many([echo.message(1), fresh, echo.message(43, key="order-42")])
    assert stored(app) == [first.id, "q"]
    assert first.info().payload == encode_args("echo", (42,), {}, LIMIT)
    assert echo.enqueue(7, key="fresh").created  # the refused batch did not take its key


def test_a_run_at_in_the_past_is_claimable_now(app: Conveyor, echo: Task[Any, Any]) -> None:
    later = echo.enqueue(1, delay=3600)
    past = echo.enqueue(2, run_at=time.time() - 3600)
    also_past = echo.enqueue(3, run_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))

    assert [Job(app, j.id).status() for j in (later, past, also_past)] == ["scheduled", "ready", "ready"]
    claimed = app.broker.reserve(["q"], 10, 30.0, "w", Fairness(WEIGHTS))
    assert sorted(d.id for d in claimed) == sorted([past.id, also_past.id])


# -- messages built by hand (issue 26, finding 10): refused at the store's door -----------------


def _hand_built(**fields: Any) -> Message:
    base: dict[str, Any] = {
        "id": new_id(),
        "task": "echo",
        "queue": "q",
        "priority": 1,
        "payload": b"[[], {}]",
    }
    return Message(**(base | fields))


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"queue": "<script>alert(1)</script>"}, "queue"),
        ({"queue": "a}b{c" * 10}, "queue"),
        ({"priority": 999}, "priority"),
        ({"priority": -5}, "priority"),
        ({"priority": True}, "priority"),
        ({"payload": b"x" * (LIMIT + 1)}, "payload"),
        ({"payload": "[[], {}]"}, "payload"),
        ({"key": "k" * 300}, "key"),
        ({"key": ""}, "key"),
        ({"id": ""}, "id"),
        ({"id": "../../etc"}, "id"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"run_at": math.nan}, "run_at"),
        ({"run_at": -1e18}, "run_at"),
        ({"run_at": 1e308}, "run_at"),
        ({"delay": 1e308}, "delay"),
        ({"delay": math.inf}, "delay"),
        ({"delay": -1.0}, "delay"),
        ({"task": ""}, "task"),
    ],
)
def test_a_hand_built_message_that_no_worker_could_serve_is_refused(
    app: Conveyor, echo: Task[Any, Any], fields: dict[str, Any], says: str
) -> None:
    good = _hand_built()
    with pytest.raises(ConfigurationError, match=f"message 1 .*{says}"):
        app.enqueue_many([good, _hand_built(**fields)])
    assert stored(app) == []


def test_one_id_on_two_messages_of_a_batch_is_refused(app: Conveyor, echo: Task[Any, Any]) -> None:
    first = _hand_built()
    with pytest.raises(ConfigurationError, match="given to another message"):
        app.enqueue_many([first, _hand_built(id=first.id, payload=b"[[1], {}]")])
    assert stored(app) == []
