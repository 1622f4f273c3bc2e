"""Typed arguments through a real worker, on every store (the store plays no part in it):
datetime, date, time, UUID, Decimal, Enum, dataclasses, msgspec Structs and pydantic models
reach the function as the annotated types, a typed return value comes back typed from
``job.result()``, payloads stored before typed arguments run as they did, and a payload that
does not convert is buried with a clear error while the worker keeps serving."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pydantic
import pytest
from backend_stores import NAMES, fresh_app
from waiting import wait_for

from conveyor import ArgumentError, JobFailed, RetryPolicy
from conveyor.ids import new_id
from conveyor.records import Message

ONCE = RetryPolicy(max_attempts=1)


class Tier(enum.Enum):
    FREE = "free"
    PRO = "pro"


@dataclasses.dataclass(frozen=True)
class Address:
    city: str
    zip: str


class Line(msgspec.Struct, frozen=True):
    sku: str
    qty: int


class Customer(pydantic.BaseModel):
    id: uuid.UUID
    since: date
    address: Address


@dataclasses.dataclass
class Receipt:
    order: uuid.UUID
    total: Decimal
    at: datetime
    lines: list[Line]


@pytest.mark.parametrize("name", NAMES)
def test_typed_arguments_and_result_round_trip(name: str, tmp_path: Path, run_worker: Any) -> None:
    seen: list[tuple[Any, ...]] = []
    with fresh_app(name, tmp_path) as app:

        @app.task
        def checkout(
            order: uuid.UUID,
            at: datetime,
            opens: time,
            total: Decimal,
            tier: Tier,
            customer: Customer,
            lines: list[Line],
            *,
            ship_to: Address | None = None,
            note: str = "",
        ) -> Receipt:
            seen.append((order, at, opens, total, tier, customer, lines, ship_to, note))
            return Receipt(order=order, total=total * 2, at=at + timedelta(days=1), lines=lines)

        @app.task
        async def later(when: date, ids: list[uuid.UUID]) -> dict[str, date]:
            return {str(i): when for i in ids}

        order, at, total = uuid.uuid4(), datetime(2026, 12, 8, 9, 30, tzinfo=UTC), Decimal("19.99")
        customer = Customer(id=uuid.uuid4(), since=date(2020, 1, 2), address=Address("Oslo", "0150"))
        lines = [Line("tea", 2), Line("cup", 1)]
        with run_worker(app, idle_wait=0.1):
            job = checkout.enqueue(
                order, at, time(8, 0), total, Tier.PRO, customer, lines, ship_to=Address("Bergen", "5003")
            )
            receipt = job.result(timeout=20)
            ids = [uuid.uuid4(), uuid.uuid4()]
            dates = later.options(priority="high").enqueue(date(2027, 1, 1), ids).result(timeout=20)
        assert seen == [
            (order, at, time(8, 0), total, Tier.PRO, customer, lines, Address("Bergen", "5003"), "")
        ]
        got = seen[0]
        assert type(got[0]) is uuid.UUID and type(got[3]) is Decimal and got[4] is Tier.PRO
        assert type(got[5]) is Customer and type(got[5].address) is Address
        assert all(type(line) is Line for line in got[6])
        assert receipt == Receipt(order=order, total=Decimal("39.98"), at=at + timedelta(days=1), lines=lines)
        assert type(receipt) is Receipt
        assert dates == {str(i): date(2027, 1, 1) for i in ids}
        # The job seen from anywhere (app.job) is rebuilt the same way, by the task's annotation.
        assert app.job(job.id).result(timeout=5) == receipt


@pytest.mark.parametrize("name", NAMES)
def test_payloads_of_plain_arguments_run_as_before(name: str, tmp_path: Path, run_worker: Any) -> None:
    """A job stored by a version without typed arguments (``[args, kwargs]``, the value as the
    producer gave it) runs with the values as stored, even for a typed parameter."""
    seen: list[Any] = []
    with fresh_app(name, tmp_path) as app:

        @app.task
        def remind(at: datetime, user: str, extra: dict[str, Any] | None = None) -> None:
            seen.append((at, user, extra))

        old = Message(
            id=new_id(),
            task=remind.name,
            queue="default",
            priority=1,
            payload=b'[["2026-12-08T09:30:00Z","ada"],{"extra":{"n":1}}]',
        )
        with run_worker(app, idle_wait=0.1):
            app.enqueue_many([old])
            app.job(old.id).result(timeout=20)
            remind.enqueue(datetime(2026, 12, 8, 9, 30, tzinfo=UTC), "bob")
            wait_for(lambda: len(seen) == 2, what="both reminders")
        assert seen[0] == ("2026-12-08T09:30:00Z", "ada", {"n": 1})
        assert seen[1] == (datetime(2026, 12, 8, 9, 30, tzinfo=UTC), "bob", None)


@pytest.mark.parametrize("name", NAMES)
def test_a_payload_that_does_not_convert_is_buried_and_the_worker_serves_on(
    name: str, tmp_path: Path, run_worker: Any
) -> None:
    calls: list[Any] = []
    with fresh_app(name, tmp_path) as app:

        @app.task(retry=ONCE)
        def bill(account: uuid.UUID, amount: Decimal, note: str = "") -> str:
            calls.append((account, amount, note))
            return "billed"

        def raw(payload: bytes) -> Message:
            return Message(id=new_id(), task=bill.name, queue="default", priority=1, payload=payload)

        bad = [
            # not a UUID
            raw(b'[["not-a-uuid","1.00"],{},[0,1]]'),
            # a mark on a plain parameter: its annotation rebuilds nothing
            raw(b'[["6f1c2f9e-1c53-4a31-9e8e-6f7a4e3b2a10","1.00"],{"note":"x"},[0,1,"note"]]'),
            # a mark naming no argument
            raw(b'[["6f1c2f9e-1c53-4a31-9e8e-6f7a4e3b2a10","1.00"],{},[0,1,7]]'),
            # a payload naming a class to build: it is only data, decoded to the annotation
            raw(b'[[{"__class__":"os.system","args":["touch /tmp/pwned"]},"1"],{},[0,1]]'),
        ]
        with run_worker(app, idle_wait=0.1):
            app.enqueue_many(bad)
            for message in bad:
                with pytest.raises(JobFailed):
                    app.job(message.id).result(timeout=20)
            good = bill.enqueue(uuid.UUID("6f1c2f9e-1c53-4a31-9e8e-6f7a4e3b2a10"), Decimal("1.00"))
            assert good.result(timeout=20) == "billed"
        assert calls == [(uuid.UUID("6f1c2f9e-1c53-4a31-9e8e-6f7a4e3b2a10"), Decimal("1.00"), "")]
        errors = [app.job(m.id).info().errors for m in bad]
        assert all(len(e) == 1 and e[0]["type"] == "MalformedPayload" for e in errors), errors
        messages = [e[0]["message"] for e in errors]
        assert "argument 0 does not convert to UUID" in messages[0]
        assert "'note' was sent typed" in messages[1]
        assert "marks 7 typed, and has no such argument" in messages[2]
        assert "argument 0 does not convert to UUID" in messages[3]


def test_a_set_comes_back_as_a_set_where_the_return_annotation_says_so(app: Any, run_worker: Any) -> None:
    @app.task
    def tags(n: int) -> frozenset[str]:
        return frozenset(f"t{i}" for i in range(n))

    with run_worker(app, idle_wait=0.1):
        assert tags.enqueue(3).result(timeout=20) == frozenset({"t0", "t1", "t2"})


def test_a_return_value_that_does_not_fit_its_annotation_fails_the_job(app: Any, run_worker: Any) -> None:
    @app.task(retry=ONCE)
    def stamp(ok: bool) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) if ok else "yesterday"  # type: ignore[return-value]

    with run_worker(app, idle_wait=0.1):
        assert stamp.enqueue(True).result(timeout=20) == datetime(2026, 1, 1, tzinfo=UTC)
        with pytest.raises(JobFailed) as failed:
            stamp.enqueue(False).result(timeout=20)
    (error,) = failed.value.errors
    assert error["type"] == "SerializationError"
    assert "return value does not fit its annotation datetime" in error["message"]


@dataclasses.dataclass(frozen=True)
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise RuntimeError(f"{self.n} is not positive")


def test_a_class_that_raises_while_being_rebuilt_is_a_misfit(app: Any, run_worker: Any) -> None:
    """Whatever a ``__post_init__`` raises refuses the value at enqueue, and buries a stored
    payload that makes it raise in the worker, which serves on."""
    calls: list[Positive] = []

    @app.task(retry=ONCE)
    def count(p: Positive) -> int:
        calls.append(p)
        return p.n

    with pytest.raises(ArgumentError, match=r"argument 'p' does not fit its annotation Positive: -1 is not"):
        count.enqueue({"n": -1})
    stored = Message(
        id=new_id(), task=count.name, queue="default", priority=1, payload=b'[[{"n":-1}],{},[0]]'
    )
    with run_worker(app, idle_wait=0.1):
        app.enqueue_many([stored])
        with pytest.raises(JobFailed):
            app.job(stored.id).result(timeout=20)
        assert count.enqueue(Positive(3)).result(timeout=20) == 3
    (error,) = app.job(stored.id).info().errors
    assert error["type"] == "MalformedPayload"
    assert "argument 0 does not convert to Positive: -1 is not positive" in error["message"]
    assert calls == [Positive(3)]
