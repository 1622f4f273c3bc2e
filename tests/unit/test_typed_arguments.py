"""Typed arguments at enqueue: which parameters convert, what is refused (naming the
parameter), what stays exactly as before, and how stored marks are checked."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple, NewType, TypedDict

import msgspec
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import ArgumentError, Conveyor, SerializationError
from conveyor.redact import Redactor
from conveyor.serializer import decode_args, decode_call

U = uuid.UUID("6f1c2f9e-1c53-4a31-9e8e-6f7a4e3b2a10")


class Tier(enum.IntEnum):
    FREE = 0
    PRO = 1


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Item(msgspec.Struct):
    sku: str
    qty: int


class Profile(pydantic.BaseModel):
    name: str
    born: date


class Opaque:
    """A class neither msgspec nor pydantic can rebuild."""


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Conveyor]:
    application = Conveyor(f"sqlite:///{tmp_path}/typed.db")
    yield application
    application.close()


def call(app: Conveyor, payload: bytes) -> tuple[list[Any], dict[str, Any], list[Any]]:
    return decode_call(payload, app.max_payload)


def test_plain_tasks_store_the_payload_as_before(app: Conveyor) -> None:
    @app.task
    def plain(a: int, b: dict[str, Any], c: list[str] | None = None, *rest: float, **kw: Any) -> None: ...

    @app.task
    def untyped(a, b=2):  # type: ignore[no-untyped-def]
        ...

    assert plain.message(1, {"x": [1]}, c=["s"]).payload == b'[[1,{"x":[1]}],{"c":["s"]}]'
    assert plain.message(1, {}, None, 1.5, z=1).payload == b'[[1,{},null,1.5],{"z":1}]'
    assert untyped.message("a", b=[1]).payload == b'[["a"],{"b":[1]}]'
    assert decode_args(untyped.message(1).payload, app.max_payload) == ([1], {})
    assert not plain.types.typed and not untyped.types.typed


def test_typed_arguments_are_stored_converted_and_marked(app: Conveyor) -> None:
    @app.task
    def f(
        when: datetime, tier: Tier, p: Point, n: int = 0, *ids: uuid.UUID, item: Item, **days: date
    ) -> None: ...

    at = datetime(2026, 12, 8, 9, 30, tzinfo=UTC)
    m = f.message(at, Tier.PRO, Point(1, 2), 5, U, item=Item("tea", 2), monday=date(2026, 12, 7))
    args, kwargs, typed = call(app, m.payload)
    assert args == ["2026-12-08T09:30:00Z", 1, {"x": 1, "y": 2}, 5, str(U)]
    assert kwargs == {"item": {"sku": "tea", "qty": 2}, "monday": "2026-12-07"}
    assert typed == [0, 1, 2, 4, "item", "monday"]
    f.types.load(args, kwargs, typed)
    assert args == [at, Tier.PRO, Point(1, 2), 5, U]
    assert kwargs == {"item": Item("tea", 2), "monday": date(2026, 12, 7)}


@pytest.mark.parametrize(
    ("arguments", "refusal"),
    [
        (("yesterday", Tier.PRO, Point(1, 2)), "argument 'when' does not fit its annotation datetime"),
        ((datetime.now(UTC), 7, Point(1, 2)), "argument 'tier' does not fit its annotation Tier"),
        ((datetime.now(UTC), Tier.PRO, {"x": 1}), "argument 'p' does not fit its annotation Point"),
        ((datetime.now(UTC), Tier.PRO, 5), "argument 'p' does not fit its annotation Point"),
        ((datetime.now(UTC), Tier.PRO, Point(1, 2), 0, U, "nope"), "argument 'ids'[1] does not fit"),
    ],
)
def test_an_argument_that_does_not_fit_is_refused_naming_its_parameter(
    app: Conveyor, arguments: tuple[Any, ...], refusal: str
) -> None:
    @app.task
    def f(when: datetime, tier: Tier, p: Point, n: int = 0, *ids: uuid.UUID) -> None: ...

    with pytest.raises(ArgumentError, match=refusal.replace("[", r"\[").replace("]", r"\]")):
        f.message(*arguments)


class Money(NamedTuple):
    amount: Decimal
    currency: str


class Span(TypedDict):
    start: datetime
    length: timedelta


UserId = NewType("UserId", uuid.UUID)


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        (timedelta, timedelta(hours=1, microseconds=5)),
        (bytes, b"\x00\xffraw"),
        (frozenset[int], frozenset({3, 1})),
        (set[uuid.UUID], {U}),
        (time, time(8, 30, 1)),
        (Money, Money(Decimal("9.99"), "EUR")),
        (Span, {"start": datetime(2026, 1, 1, tzinfo=UTC), "length": timedelta(minutes=5)}),
        (UserId, UserId(U)),
        (tuple[date, Tier], (date(2026, 1, 1), Tier.FREE)),
        (dict[uuid.UUID, Decimal], {U: Decimal("1.5")}),
        (Point | None, None),
    ],
)
def test_more_annotated_types_round_trip(app: Conveyor, annotation: Any, value: Any) -> None:
    def f(x: Any) -> None: ...

    f.__annotations__ = {"x": annotation, "return": "None"}
    task = app.task(name=f"t{id(annotation)}")(f)
    args, kwargs, typed = call(app, task.message(value).payload)
    assert typed == [0]
    task.types.load(args, kwargs, typed)
    assert args == [value] and type(args[0]) is type(value)


def test_pydantic_models_use_pydantic_validation(app: Conveyor) -> None:
    @app.task
    def greet(profile: Profile, friends: list[Profile] | None = None) -> Profile:
        return profile

    ada = Profile(name="Ada", born=date(1815, 12, 10))
    m = greet.message(ada, friends=[ada])
    args, kwargs, typed = call(app, m.payload)
    assert args == [{"name": "Ada", "born": "1815-12-10"}] and typed == [0, "friends"]
    greet.types.load(args, kwargs, typed)
    assert args == [ada] and kwargs == {"friends": [ada]}
    # A dict that validates is accepted, as pydantic would; one that does not is refused.
    greet.message({"name": "Bob", "born": "1900-01-01"})
    with pytest.raises(ArgumentError, match=r"argument 'profile' does not fit its annotation Profile"):
        greet.message({"name": "Bob", "born": "someday"})
    assert greet.types.load_result({"name": "Ada", "born": "1815-12-10"}) == ada


def test_a_typed_value_for_a_plain_parameter_is_refused_with_the_way_out(app: Conveyor) -> None:
    @app.task
    def f(a, b: Any = None):  # type: ignore[no-untyped-def]
        ...

    with pytest.raises(SerializationError, match="datetime is not JSON-serializable") as refused:
        f.message(datetime.now(UTC))
    assert "annotating its parameter with its type" in str(refused.value)
    with pytest.raises(SerializationError, match=r"argument 'b': UUID is not JSON-serializable"):
        f.message(1, b=U)


def test_annotations_that_do_not_resolve_or_convert_leave_arguments_plain(app: Conveyor) -> None:
    @app.task
    def later(a: NotDefinedAnywhere, n: int) -> None:  # type: ignore[name-defined] # noqa: F821
        ...

    @app.task
    def odd(thing: Opaque, n: int) -> None: ...

    assert later.message("plain", 1).payload == b'[["plain",1],{}]'
    with pytest.raises(SerializationError, match=r"annotations do not resolve.*NameError"):
        later.message(date.today(), 1)
    assert odd.message({"a": 1}, 2).payload == b'[[{"a":1},2],{}]'
    with pytest.raises(SerializationError, match=r"Opaque is not JSON-serializable.*is not a type Conveyor"):
        odd.message(Opaque(), 2)


def test_a_key_compares_typed_calls_in_canonical_form(app: Conveyor) -> None:
    @app.task
    def charge(account: uuid.UUID, amount: Decimal) -> None: ...

    first = charge.options(key="order-1").enqueue(U, Decimal("9.50"))
    again = charge.options(key="order-1").enqueue(account=U, amount=Decimal("9.50"))
    assert again == first and not again.created


def test_typed_marks_that_are_not_a_list_are_malformed(app: Conveyor) -> None:
    for payload in (b"[[],{},{}]", b"[[],{},[]]", b'[[],{},"0"]', b"[[],{},null]", b"[[],{},[0],1]"):
        with pytest.raises(SerializationError, match="not an"):
            call(app, payload)
    with pytest.raises(SerializationError, match="typed arguments"):
        decode_args(b'[["x"],{},[0]]', app.max_payload)


def test_the_redactor_shows_typed_payloads(app: Conveyor) -> None:
    @app.task
    def f(when: date, secret_token: str) -> None: ...

    shown = Redactor().arguments(f.message(date(2026, 1, 2), "hunter2").payload, f.signature)
    assert shown is not None
    assert shown["args"][0] == "2026-01-02"
    assert "hunter2" not in str(shown)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    at=st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5, minutes=-30))])),
    naive=st.datetimes(),
    ids=st.lists(st.uuids(), max_size=3),
    amount=st.decimals(allow_nan=False),
    day=st.dates(),
    tier=st.sampled_from(Tier),
)
def test_typed_values_round_trip_exactly(
    app: Conveyor, at: datetime, naive: datetime, ids: list[uuid.UUID], amount: Decimal, day: date, tier: Tier
) -> None:
    task = app.tasks.get("prop") or app.task(name="prop")(_prop)
    args, kwargs, typed = call(app, task.message(at, naive, ids, amount, day=day, tier=tier).payload)
    task.types.load(args, kwargs, typed)
    assert args == [at, naive, ids, amount] and kwargs == {"day": day, "tier": tier}
    assert args[0].utcoffset() == at.utcoffset() and str(args[3]) == str(amount)


def _prop(
    at: datetime, naive: datetime, ids: list[uuid.UUID], amount: Decimal, *, day: date, tier: Tier
) -> None:
    pass
