"""RetryPolicy (backoff schedule, jitter, which errors retry) and the executor's failure decision."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, Retry, RetryPolicy
from conveyor.app import Task
from conveyor.errors import ConfigurationError
from conveyor.records import Delivery
from conveyor.worker.executor import bury, error_record, failure


class StubRandom:
    """Stands in for random.Random: ``random()`` returns the chosen values in turn."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls = 0

    def random(self) -> float:
        self.calls += 1
        return self.values.pop(0)


# --- backoff schedule ---------------------------------------------------------------------------


def test_no_jitter_doubles_from_base() -> None:
    policy = RetryPolicy(base=1, factor=2, max_delay=10_000, jitter="none")
    assert [policy.backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 64, 128]


def test_no_jitter_is_capped_at_max_delay() -> None:
    policy = RetryPolicy(base=1, factor=2, max_delay=10, jitter="none")
    assert [policy.backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]


def test_no_jitter_uses_base_and_factor() -> None:
    policy = RetryPolicy(base=0.5, factor=3, max_delay=1000, jitter="none")
    assert [policy.backoff(n) for n in range(1, 5)] == [0.5, 1.5, 4.5, 13.5]


def test_factor_one_is_a_constant_delay() -> None:
    policy = RetryPolicy(base=5, factor=1, jitter="none")
    assert {policy.backoff(n) for n in range(1, 50)} == {5}


def test_zero_base_never_waits() -> None:
    policy = RetryPolicy(base=0, jitter="none")
    assert policy.backoff(1) == 0
    assert policy.backoff(100) == 0


@pytest.mark.parametrize("attempt", [1_100, 10**6, 10**18])
def test_zero_base_never_waits_even_past_float_range(attempt: int) -> None:
    # BUG: backoff() maps OverflowError of factor ** (attempt - 1) to max_delay, but with
    # base 0 the delay is 0 * (huge) = 0, not max_delay.
    assert RetryPolicy(base=0, factor=2, max_delay=3600, jitter="none").backoff(attempt) == 0


def test_no_jitter_does_not_draw() -> None:
    rng = StubRandom()
    assert RetryPolicy(base=3, jitter="none").backoff(1, rng) == 3  # type: ignore[arg-type]
    assert rng.calls == 0


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 0.0), (0.5, 4.0), (0.25, 2.0)])
def test_full_jitter_scales_delay_by_draw(draw: float, expected: float) -> None:
    policy = RetryPolicy(base=1, factor=2, max_delay=100, jitter="full")
    # attempt 4: delay 8
    assert policy.backoff(4, StubRandom(draw)) == pytest.approx(expected)  # type: ignore[arg-type]


def test_full_jitter_top_draw_is_close_to_delay() -> None:
    policy = RetryPolicy(base=1, factor=2, max_delay=100, jitter="full")
    value = policy.backoff(4, StubRandom(0.999))  # type: ignore[arg-type]
    assert 7.99 <= value < 8


def test_full_jitter_respects_the_cap() -> None:
    policy = RetryPolicy(base=1, factor=2, max_delay=10, jitter="full")
    assert policy.backoff(20, StubRandom(0.5)) == pytest.approx(5)  # type: ignore[arg-type]


def test_full_jitter_with_seeded_rng_stays_in_range_and_spreads() -> None:
    policy = RetryPolicy(base=1, factor=2, max_delay=100, jitter="full")
    rng = random.Random(1234)
    values = [policy.backoff(4, rng) for _ in range(2000)]
    assert all(0 <= v <= 8 for v in values)
    assert min(values) < 0.5
    assert max(values) > 7.5
    assert 3.5 < sum(values) / len(values) < 4.5


def test_full_jitter_is_reproducible_with_the_same_seed() -> None:
    policy = RetryPolicy(base=1, factor=2, jitter="full")
    a = [policy.backoff(n, random.Random(7)) for n in range(1, 6)]
    b = [policy.backoff(n, random.Random(7)) for n in range(1, 6)]
    assert a == b


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 4.0), (0.5, 6.0), (1.0, 8.0)])
def test_equal_jitter_is_half_fixed_half_drawn(draw: float, expected: float) -> None:
    policy = RetryPolicy(base=1, factor=2, max_delay=100, jitter="equal")
    assert policy.backoff(4, StubRandom(draw)) == pytest.approx(expected)  # type: ignore[arg-type]


def test_equal_jitter_with_seeded_rng_stays_in_upper_half() -> None:
    policy = RetryPolicy(base=1, factor=2, max_delay=100, jitter="equal")
    rng = random.Random(99)
    values = [policy.backoff(4, rng) for _ in range(2000)]
    assert all(4 <= v <= 8 for v in values)
    assert min(values) < 4.2
    assert max(values) > 7.8


def test_default_policy_uses_full_jitter_within_delay() -> None:
    policy = RetryPolicy()
    assert policy.jitter == "full"
    assert all(0 <= policy.backoff(1) <= 1 for _ in range(200))


@pytest.mark.parametrize("attempt", [64, 1_000, 1_025, 10**6, 10**18])
def test_huge_attempt_numbers_hit_the_cap_without_overflow(attempt: int) -> None:
    policy = RetryPolicy(base=1, factor=2, max_delay=3600, jitter="none")
    assert policy.backoff(attempt) == 3600
    full = RetryPolicy(base=1, factor=2, max_delay=3600, jitter="full")
    assert full.backoff(attempt, StubRandom(0.5)) == pytest.approx(1800)  # type: ignore[arg-type]


@pytest.mark.parametrize("factor", [2.5, 3, 10.0])
@pytest.mark.parametrize("attempt", [700, 10**6])
def test_huge_attempt_numbers_do_not_overflow_with_steeper_factors(factor: float, attempt: int) -> None:
    # factor ** (attempt - 1) leaves float range long before the cap matters.
    policy = RetryPolicy(base=1.0, factor=factor, max_delay=3600, jitter="none")
    assert policy.backoff(attempt) == 3600


def test_huge_attempt_without_a_cap_does_not_raise() -> None:
    policy = RetryPolicy(base=1, factor=2, max_delay=math.inf, jitter="none")
    assert policy.backoff(10**9) > 0


# --- retries(exc) ---------------------------------------------------------------------------------


def test_default_retries_any_exception() -> None:
    policy = RetryPolicy()
    assert policy.retries(ValueError("x"))
    assert policy.retries(RuntimeError("x"))


def test_default_does_not_retry_base_exceptions() -> None:
    policy = RetryPolicy()
    assert not policy.retries(KeyboardInterrupt())
    assert not policy.retries(SystemExit(1))


def test_retry_on_limits_which_errors_retry() -> None:
    policy = RetryPolicy(retry_on=(ConnectionError, TimeoutError))
    assert policy.retries(ConnectionError())
    assert policy.retries(ConnectionResetError())  # subclass
    assert policy.retries(TimeoutError())
    assert not policy.retries(ValueError())


def test_give_up_on_wins_over_retry_on() -> None:
    policy = RetryPolicy(retry_on=(Exception,), give_up_on=(KeyError,))
    assert not policy.retries(KeyError("k"))
    assert policy.retries(IndexError("i"))  # sibling LookupError still retried


def test_give_up_on_matches_subclasses_even_if_listed_in_retry_on() -> None:
    policy = RetryPolicy(retry_on=(ConnectionResetError,), give_up_on=(ConnectionError,))
    assert not policy.retries(ConnectionResetError())


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"max_attempts": 1.5},
        {"max_attempts": "3"},
        {"base": -1},
        {"base": math.nan},
        {"factor": 0.5},
        {"factor": 0},
        {"factor": math.nan},
        {"max_delay": -0.1},
        {"max_delay": math.nan},
        {"jitter": "random"},
        {"jitter": None},
    ],
)
def test_invalid_config_raises_configuration_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("retry_on", [("ValueError",), (ValueError, 42)])
def test_retry_on_must_hold_exception_types(retry_on: tuple[Any, ...]) -> None:
    # Otherwise the mistake would surface as a TypeError from isinstance() in the worker.
    with pytest.raises(ConfigurationError):
        RetryPolicy(retry_on=retry_on)
    with pytest.raises(ConfigurationError):
        RetryPolicy(give_up_on=retry_on)


def test_retry_on_must_be_a_tuple() -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(retry_on=[ValueError])  # type: ignore[arg-type]


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_single_attempt_is_valid() -> None:
    assert RetryPolicy(max_attempts=1).max_attempts == 1


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_attempts = 3  # type: ignore[misc]


# --- Retry exception ------------------------------------------------------------------------------


def test_retry_exception_carries_delay_and_reason() -> None:
    exc = Retry(delay=7, reason="rate limited")
    assert exc.delay == 7
    assert str(exc) == "rate limited"
    assert Retry().delay is None


@pytest.mark.parametrize("delay", [-1, -0.001, math.nan])
def test_retry_rejects_invalid_delay(delay: float) -> None:
    with pytest.raises(ConfigurationError):
        Retry(delay=delay)


# --- executor: failure(), bury(), error_record() --------------------------------------------------

POLICY = RetryPolicy(max_attempts=3, base=1, factor=2, max_delay=100, jitter="none")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Conveyor]:
    application = Conveyor(f"sqlite:///{tmp_path}/x.db")
    yield application
    application.close()


@pytest.fixture
def task(app: Conveyor) -> Task[Any, Any]:
    @app.task(name="flaky", retry=POLICY)
    def flaky() -> None:
        return None

    return flaky


def delivery(attempt: int, max_attempts: int = 3, task: str = "flaky") -> Delivery:
    return Delivery(
        id="01HZZZZZZZZZZZZZZZZZZZZZZZ",
        task=task,
        queue="default",
        priority=1,
        payload=b"[[],{}]",
        attempt=attempt,
        max_attempts=max_attempts,
        token=42,
        run_at=1000.0,
        enqueued_at=999.0,
    )


def raised(exc: BaseException) -> BaseException:
    """The exception with a real traceback, as the executor sees it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_failure_retries_with_policy_delay_while_attempts_remain(task: Task[Any, Any]) -> None:
    first = failure(delivery(1), "w1", raised(ValueError("boom")), task, random.Random(0))
    assert first.kind == "retry"
    assert first.delay == 1
    assert first.id == "01HZZZZZZZZZZZZZZZZZZZZZZZ"
    assert first.token == 42
    second = failure(delivery(2), "w1", raised(ValueError("boom")), task, random.Random(0))
    assert second.kind == "retry"
    assert second.delay == 2


def test_failure_uses_the_given_rng_for_jitter(app: Conveyor) -> None:
    @app.task(name="jittery", retry=RetryPolicy(max_attempts=5, base=4, jitter="full"))
    def jittery() -> None:
        return None

    outcome = failure(
        delivery(1, 5, "jittery"),
        "w1",
        raised(ValueError()),
        jittery,
        StubRandom(0.5),  # type: ignore[arg-type]
    )
    assert outcome.kind == "retry"
    assert outcome.delay == pytest.approx(2)


def test_failure_on_last_attempt_is_dead(task: Task[Any, Any]) -> None:
    outcome = failure(delivery(3), "w1", raised(ValueError("boom")), task, random.Random(0))
    assert outcome.kind == "dead"
    assert outcome.error is not None
    assert outcome.error["attempt"] == 3


def test_failure_beyond_max_attempts_is_dead(task: Task[Any, Any]) -> None:
    outcome = failure(delivery(4), "w1", raised(ValueError()), task, random.Random(0))
    assert outcome.kind == "dead"


def test_failure_with_single_attempt_is_dead_immediately(task: Task[Any, Any]) -> None:
    outcome = failure(delivery(1, max_attempts=1), "w1", raised(ValueError()), task, random.Random(0))
    assert outcome.kind == "dead"


def test_failure_of_error_not_in_retry_on_is_dead_immediately(app: Conveyor) -> None:
    @app.task(name="picky", retry=RetryPolicy(max_attempts=5, retry_on=(ConnectionError,)))
    def picky() -> None:
        return None

    outcome = failure(delivery(1, 5, "picky"), "w1", raised(ValueError("bad input")), picky, random.Random(0))
    assert outcome.kind == "dead"
    assert outcome.error is not None
    assert outcome.error["type"] == "ValueError"


def test_failure_of_give_up_on_error_is_dead_immediately(app: Conveyor) -> None:
    @app.task(name="quitter", retry=RetryPolicy(max_attempts=5, give_up_on=(KeyError,)))
    def quitter() -> None:
        return None

    outcome = failure(delivery(1, 5, "quitter"), "w1", raised(KeyError("k")), quitter, random.Random(0))
    assert outcome.kind == "dead"


def test_failure_without_a_task_is_dead(task: Task[Any, Any]) -> None:
    outcome = failure(delivery(1), "w1", raised(ValueError()), None, random.Random(0))
    assert outcome.kind == "dead"


def test_retry_with_explicit_delay(task: Task[Any, Any]) -> None:
    outcome = failure(delivery(1), "w1", raised(Retry(delay=7)), task, random.Random(0))
    assert outcome.kind == "retry"
    assert outcome.delay == 7


def test_retry_with_zero_delay(task: Task[Any, Any]) -> None:
    outcome = failure(delivery(2), "w1", raised(Retry(delay=0)), task, random.Random(0))
    assert outcome.kind == "retry"
    assert outcome.delay == 0


def test_retry_without_delay_uses_the_policy(task: Task[Any, Any]) -> None:
    assert failure(delivery(1), "w1", raised(Retry()), task, random.Random(0)).delay == 1
    assert failure(delivery(2), "w1", raised(Retry()), task, random.Random(0)).delay == 2


def test_retry_on_last_attempt_is_dead(task: Task[Any, Any]) -> None:
    outcome = failure(delivery(3), "w1", raised(Retry(delay=7)), task, random.Random(0))
    assert outcome.kind == "dead"
    assert outcome.error is not None
    assert outcome.error["type"] == "Retry"


def test_retry_is_honoured_even_if_retry_on_does_not_list_it(app: Conveyor) -> None:
    @app.task(name="asks", retry=RetryPolicy(max_attempts=5, retry_on=(ConnectionError,)))
    def asks() -> None:
        return None

    outcome = failure(delivery(1, 5, "asks"), "w1", raised(Retry(delay=3)), asks, random.Random(0))
    assert outcome.kind == "retry"
    assert outcome.delay == 3


def test_failure_error_record_fields(task: Task[Any, Any]) -> None:
    before = time.time()
    outcome = failure(delivery(2), "worker-7", raised(ValueError("boom")), task, random.Random(0))
    after = time.time()
    record = outcome.error
    assert record is not None
    assert set(record) == {"attempt", "type", "message", "traceback", "worker", "at"}
    assert record["attempt"] == 2
    assert record["type"] == "ValueError"
    assert record["message"] == "boom"
    assert record["worker"] == "worker-7"
    assert before <= record["at"] <= after
    assert "Traceback" in record["traceback"]
    assert "ValueError: boom" in record["traceback"]
    assert "raised" in record["traceback"]  # the frame that raised it


def test_failure_message_falls_back_to_repr() -> None:
    outcome = failure(delivery(1), "w", raised(ValueError()), None, random.Random(0))
    assert outcome.error is not None
    assert outcome.error["message"] == "ValueError()"


def test_failure_type_is_the_qualified_name(task: Task[Any, Any]) -> None:
    class Outer:
        class Inner(Exception):
            pass

    outcome = failure(delivery(1), "w", raised(Outer.Inner("x")), task, random.Random(0))
    assert outcome.error is not None
    assert outcome.error["type"].endswith("Outer.Inner")


def test_error_record_truncates_message_and_traceback() -> None:
    exc = raised(ValueError("m" * 50_000))
    record = error_record(delivery(1), "w", exc, "ValueError", str(exc))
    assert len(record["message"]) == 2000
    assert len(record["traceback"]) == 20_000
    assert record["traceback"].endswith("m" * 100 + "\n")  # keeps the end, where the error is


def test_error_record_without_exception_has_no_traceback() -> None:
    record = error_record(delivery(1), "w", None, "UnknownTask", "not registered")
    assert record["traceback"] is None
    assert record["type"] == "UnknownTask"
    assert record["message"] == "not registered"


def test_bury_is_dead_without_traceback() -> None:
    outcome = bury(delivery(1), "w9", "MalformedPayload", "payload does not decode")
    assert outcome.kind == "dead"
    assert outcome.token == 42
    assert outcome.error is not None
    assert outcome.error["type"] == "MalformedPayload"
    assert outcome.error["message"] == "payload does not decode"
    assert outcome.error["worker"] == "w9"
    assert outcome.error["attempt"] == 1
    assert outcome.error["traceback"] is None


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_attempts": True}, id="bool-attempts"),
        pytest.param({"base": "1"}, id="str-base"),
        pytest.param({"base": float("inf")}, id="inf-base"),
        pytest.param({"factor": float("nan")}, id="nan-factor"),
    ],
)
def test_policy_numbers_must_be_real_finite_numbers(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_delay_must_be_finite() -> None:
    with pytest.raises(ConfigurationError):
        Retry(delay=float("inf"))
