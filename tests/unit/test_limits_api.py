"""Declaring limits: what is refused at definition and at enqueue, and how keys render."""

from __future__ import annotations

import pytest

from conveyor import ConfigurationError, Conveyor, Limit, Message, Rule
from conveyor.ids import new_id
from conveyor.limits import parse_rate, tokens
from conveyor.validate import InvalidMessage


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [
        ("100/s", 100.0),
        ("30/m", 0.5),
        ("3600/h", 1.0),
        ("5/10s", 0.5),
        ("86400/d", 1.0),
        (2.5, 2.5),
        ("1 / min", 1 / 60),
    ],
)
def test_rates_parse(rate: str | float, per_second: float) -> None:
    assert parse_rate(rate) == pytest.approx(per_second)


@pytest.mark.parametrize("rate", ["fast", "10", "10/y", "-1/s", "0/s", "1e9/s", True, None, "10/0s"])
def test_bad_rates_are_refused(rate: object) -> None:
    with pytest.raises(ConfigurationError):
        parse_rate(rate)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ([Limit(key="acct:{nope}", rate=1)], "names 'nope', which is not a parameter"),
        ([Limit(key="acct:{account.__class__}", rate=1)], "fields are bare parameter names"),
        ([Limit(key="acct:{account!r}", rate=1)], "fields are bare parameter names"),
        ([Limit(key="acct:{account:>10}", rate=1)], "fields are bare parameter names"),
        ([Limit(key="acct:{rest}", rate=1)], "not a parameter"),
        ([Limit(key="acct:{", rate=1)], "limit key 'acct:{'"),
        ([Limit(rate=1), Limit(concurrency=2)], "two limits with the key"),
        ([Limit(key=f"k{i}", rate=1) for i in range(5)], "at most 4 limits"),
        (["100/s"], "limits must be conveyor.Limit objects"),
    ],
)
def test_bad_declarations_are_refused_at_definition(app: Conveyor, limits: list[Limit], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace("{", r"\{")):

        @app.task(limits=limits)
        def charge(account: str, *rest: int) -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": "1/s", "concurrency": 0}, "concurrency must be an int from 1"),
        ({"concurrency": -1}, "concurrency must be an int from 1"),
        ({"burst": 3}, "a burst needs a rate"),
        ({}, "give a rate, a concurrency, or both"),
        ({"rate": "1/s", "burst": 0}, "burst must be an int from 1"),
        ({"concurrency": 2, "key": "bad\nkey"}, "no control characters"),
    ],
)
def test_bad_limits_are_refused_when_made(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Limit(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rate", "burst", "expected"),
    [
        ("30/m", None, 1),
        ("10/s", None, 1),
        ("10.5/s", None, 2),
        ("30/s", None, 3),
        ("100/s", None, 10),
        ("500/s", None, 50),
        (1_000_000, None, 100_000),
        ("500/s", 1, 1),
        ("5/s", 20, 20),
    ],
)
def test_the_default_burst_is_a_tenth_of_a_second_of_the_rate(
    app: Conveyor, rate: str | float, burst: int | None, expected: int
) -> None:
    @app.task(name="paced", limits=[Limit(rate=rate, burst=burst)])
    def paced() -> None: ...

    assert paced.message().limits[0].burst == expected
    app.limit("default", "set:at-run-time", rate=rate, burst=burst)
    (info,) = [i for i in app.limits() if i.key == "set:at-run-time"]
    assert info.burst == expected


def test_keys_render_from_the_call_with_defaults(app: Conveyor) -> None:
    @app.task(name="charge", limits=[Limit(rate="10/s"), Limit(key="acct:{account}/{region}", concurrency=2)])
    def charge(account: str, cents: int = 0, region: str = "eu") -> None: ...

    for call in (charge.message("a1", 5), charge.message(account="a1"), charge.message("a1", region="eu")):
        assert call.limits == (
            Rule(key="task:charge", rate=10.0, burst=1),
            Rule(key="acct:a1/eu", concurrency=2),
        )
    assert charge.message("a2", region="us").limits[1].key == "acct:a2/us"


def test_a_key_that_renders_too_long_or_to_control_characters_is_refused_at_enqueue(app: Conveyor) -> None:
    @app.task(limits=[Limit(key="acct:{account}", concurrency=1)])
    def charge(account: str) -> None: ...

    with pytest.raises(ConfigurationError, match="limit key"):
        charge.enqueue("x" * 300)
    with pytest.raises(ConfigurationError, match="no control characters"):
        charge.enqueue("a\x1fb")
    assert app.broker.jobs() == []


@pytest.mark.parametrize(
    "limits",
    [
        (Rule(key="k", rate=-1.0),),
        (Rule(key="k"),),
        (Rule(key="", concurrency=1),),
        (Rule(key="k", concurrency=1), Rule(key="k", concurrency=2)),
        (Rule(key="k", concurrency=1),) * 5,
        ("k",),
        [Rule(key="k", concurrency=1)],
        (Rule(key="k", rate=1.0, burst=0),),
    ],
)
def test_hand_built_messages_with_bad_limits_are_refused(app: Conveyor, limits: object) -> None:
    m = Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[[],{}]", limits=limits)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match="limits"):
        app.enqueue_many([m])
    assert app.broker.jobs() == []


def test_bucket_arithmetic() -> None:
    assert tokens(0.0, 100.0, 10.0, 3) == 3  # idle: full
    assert tokens(100.3, 100.0, 10.0, 3) == 0  # three spent just now
    assert tokens(100.3, 100.1, 10.0, 3) == 1
    assert tokens(0.0, 100.0, 0.0, 1) == float("inf")  # no rate
