"""The application object: task registration, message validation, configuration, URLs and ids."""

from __future__ import annotations

import datetime as dt
import inspect
import math
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, RetryPolicy
from conveyor.app import DEFAULT_URL, MAX_KEY_LENGTH, Task
from conveyor.brokers import open_broker, redact_url
from conveyor.errors import ArgumentError, ConfigurationError, PayloadTooLarge, SerializationError
from conveyor.ids import new_id
from conveyor.records import Message
from conveyor.serializer import decode_args


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Conveyor]:
    application = Conveyor(f"sqlite:///{tmp_path}/x.db")
    yield application
    application.close()


@pytest.fixture
def add(app: Conveyor) -> Task[Any, Any]:
    @app.task(name="add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    return add


def module_level_task(x: int) -> int:
    return x


# --- registration ---------------------------------------------------------------------------------


def test_task_registers_by_module_and_qualname(app: Conveyor) -> None:
    task = app.task(module_level_task)
    assert task.name == f"{__name__}.module_level_task"
    assert app.tasks[task.name] is task


def test_task_registers_nested_function_by_qualname(app: Conveyor) -> None:
    @app.task
    def inner() -> None:
        return None

    assert inner.name == f"{__name__}.test_task_registers_nested_function_by_qualname.<locals>.inner"
    assert app.tasks[inner.name] is inner


def test_task_registers_by_explicit_name(app: Conveyor) -> None:
    @app.task(name="emails.send")
    def send() -> None:
        return None

    assert send.name == "emails.send"
    assert app.tasks == {"emails.send": send}


def test_task_keeps_function_metadata(app: Conveyor) -> None:
    @app.task
    def documented() -> None:
        """Docs here."""

    assert isinstance(documented, Task)
    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Docs here."
    assert not documented.is_async


def test_async_task_is_detected(app: Conveyor) -> None:
    @app.task
    async def coro() -> int:
        return 1

    assert coro.is_async


def test_duplicate_name_is_refused(app: Conveyor) -> None:
    @app.task(name="dup")
    def first() -> None:
        return None

    with pytest.raises(ConfigurationError, match="dup"):

        @app.task(name="dup")
        def second() -> None:
            return None

    assert app.tasks["dup"] is first


def test_duplicate_default_name_is_refused(app: Conveyor) -> None:
    app.task(module_level_task)
    with pytest.raises(ConfigurationError):
        app.task(module_level_task)


def test_same_name_in_two_apps_is_fine(tmp_path: Path) -> None:
    a = Conveyor(f"sqlite:///{tmp_path}/a.db")
    b = Conveyor(f"sqlite:///{tmp_path}/b.db")
    a.task(module_level_task)
    b.task(module_level_task)
    assert list(a.tasks) == list(b.tasks)


@pytest.mark.parametrize("reserved", ["priority", "delay", "run_at", "key", "queue", "connection"])
def test_reserved_parameter_name_is_refused_at_decoration(app: Conveyor, reserved: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def fn(x, {reserved}=None):\n    return x\n", namespace)
    with pytest.raises(ConfigurationError, match=reserved):
        app.task(namespace["fn"])
    assert app.tasks == {}


def test_reserved_keyword_only_and_var_keyword_names_are_refused(app: Conveyor) -> None:
    def kwonly(*, delay: float) -> None:
        return None

    def varkw(**key: Any) -> None:
        return None

    with pytest.raises(ConfigurationError):
        app.task(kwonly)
    with pytest.raises(ConfigurationError):
        app.task(varkw)


@pytest.mark.parametrize(
    "options",
    [
        {"queue": ""},
        {"queue": "has space"},
        {"priority": "urgent"},
        {"priority": 9},
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": "5"},
    ],
)
def test_invalid_task_options_are_refused(app: Conveyor, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        app.task(**options)(module_level_task)
    assert app.tasks == {}


def test_task_defaults(app: Conveyor, add: Task[Any, Any]) -> None:
    assert add.queue == "default"
    assert add.priority == 1  # normal
    assert add.retry is app.retry
    assert add.timeout is None


def test_task_options(app: Conveyor) -> None:
    policy = RetryPolicy(max_attempts=2)

    @app.task(queue="emails", priority="high", retry=policy, timeout=2.5)
    def send() -> None:
        return None

    assert (send.queue, send.priority, send.retry, send.timeout) == ("emails", 0, policy, 2.5)


def test_calling_the_task_runs_the_function(add: Task[Any, Any]) -> None:
    assert add(2, 3) == 5
    assert add(a=4) == 4


def test_calling_the_task_does_not_touch_the_store(tmp_path: Path) -> None:
    application = Conveyor(f"sqlite:///{tmp_path}/never.db")

    @application.task
    def double(x: int) -> int:
        return 2 * x

    assert double(21) == 42
    assert application._broker is None
    assert not (tmp_path / "never.db").exists()


# --- Task.message ---------------------------------------------------------------------------------


def test_message_defaults(add: Task[Any, Any], app: Conveyor) -> None:
    msg = add.message(1, b=2)
    assert isinstance(msg, Message)
    assert msg.task == "add"
    assert msg.queue == "default"
    assert msg.priority == 1
    assert msg.delay == 0.0
    assert msg.run_at is None
    assert msg.key is None
    assert msg.max_attempts == app.retry.max_attempts == 5
    assert len(msg.id) == 26
    assert decode_args(msg.payload, app.max_payload) == ([1], {"b": 2})


def test_each_message_gets_a_new_id(add: Task[Any, Any]) -> None:
    assert add.message(1).id != add.message(1).id


@pytest.mark.parametrize(("priority", "index"), [("high", 0), ("normal", 1), ("low", 2), (0, 0), (2, 2)])
def test_message_priority(add: Task[Any, Any], priority: str | int, index: int) -> None:
    assert add.message(1, priority=priority).priority == index


@pytest.mark.parametrize("priority", ["urgent", "", 3, -1, True, 1.0])
def test_message_invalid_priority(add: Task[Any, Any], priority: Any) -> None:
    with pytest.raises(ConfigurationError):
        add.message(1, priority=priority)


@pytest.mark.parametrize(("delay", "stored"), [(0, 0.0), (5, 5.0), (0.25, 0.25), (1e9, 1e9)])
def test_message_delay(add: Task[Any, Any], delay: float, stored: float) -> None:
    msg = add.message(1, delay=delay)
    assert msg.delay == stored
    assert type(msg.delay) is float
    assert msg.run_at is None


@pytest.mark.parametrize("delay", [-1, -0.001, math.nan, math.inf, -math.inf, True, False, "5", [1]])
def test_message_invalid_delay(add: Task[Any, Any], delay: Any) -> None:
    with pytest.raises(ConfigurationError, match="delay"):
        add.message(1, delay=delay)


def test_message_delay_and_run_at_together(add: Task[Any, Any]) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        add.message(1, delay=5, run_at=dt.datetime.now(dt.UTC))
    with pytest.raises(ConfigurationError):
        add.message(1, delay=0, run_at=0)


def test_message_run_at_aware_datetime_becomes_timestamp(add: Task[Any, Any]) -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert add.message(1, run_at=when).run_at == when.timestamp() == 1893553445.0
    offset = dt.datetime(2030, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert add.message(1, run_at=offset).run_at == 1893553445.0


def test_message_run_at_unix_time(add: Task[Any, Any]) -> None:
    msg = add.message(1, run_at=1893553445)
    assert msg.run_at == 1893553445.0
    assert type(msg.run_at) is float
    assert msg.delay == 0.0


def test_message_run_at_in_the_past_is_accepted(add: Task[Any, Any]) -> None:
    assert add.message(1, run_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).run_at == 946684800.0


def test_message_naive_run_at_is_refused(add: Task[Any, Any]) -> None:
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        add.message(1, run_at=dt.datetime(2030, 1, 1))


@pytest.mark.parametrize("run_at", [math.nan, math.inf, -math.inf, True, "2030-01-01", dt.date(2030, 1, 1)])
def test_message_invalid_run_at(add: Task[Any, Any], run_at: Any) -> None:
    with pytest.raises(ConfigurationError, match="run_at"):
        add.message(1, run_at=run_at)


@pytest.mark.parametrize("key", ["k", "order:42", "x" * MAX_KEY_LENGTH, "ключ"])
def test_message_key(add: Task[Any, Any], key: str) -> None:
    assert add.message(1, key=key).key == key


@pytest.mark.parametrize("key", ["", "x" * (MAX_KEY_LENGTH + 1), 42, b"k"])
def test_message_invalid_key(add: Task[Any, Any], key: Any) -> None:
    assert MAX_KEY_LENGTH == 255
    with pytest.raises(ConfigurationError, match="key"):
        add.message(1, key=key)


@pytest.mark.parametrize("queue", ["emails", "a", "x" * 128, "A-Z_0.9:b"])
def test_message_queue_override(add: Task[Any, Any], queue: str) -> None:
    assert add.message(1, queue=queue).queue == queue


@pytest.mark.parametrize("queue", ["", "x" * 129, "has space", "a/b", "é", "tab\t", 5, None.__class__])
def test_message_invalid_queue(add: Task[Any, Any], queue: Any) -> None:
    with pytest.raises(ConfigurationError, match="queue"):
        add.message(1, queue=queue)


@pytest.mark.parametrize("queue", ["default\n", "emails\n"])
def test_queue_name_with_trailing_newline_is_refused(app: Conveyor, add: Task[Any, Any], queue: str) -> None:
    # BUG: app.py _QUEUE_NAME uses "^...$" with .match(); "$" also matches before a trailing
    # newline, so "default\n" passes validation. Use re.fullmatch or "\Z".
    with pytest.raises(ConfigurationError):
        add.message(1, queue=queue)
    with pytest.raises(ConfigurationError):
        app.task(name="nl", queue=queue)(module_level_task)


def test_message_max_attempts_from_task_policy(app: Conveyor) -> None:
    @app.task(retry=RetryPolicy(max_attempts=2))
    def once_more() -> None:
        return None

    assert once_more.message().max_attempts == 2


def test_message_max_attempts_from_app_policy(tmp_path: Path) -> None:
    application = Conveyor(f"sqlite:///{tmp_path}/x.db", retry=RetryPolicy(max_attempts=9))

    @application.task
    def job() -> None:
        return None

    assert job.message().max_attempts == 9


def test_message_uses_task_queue_and_priority(app: Conveyor) -> None:
    @app.task(queue="reports", priority="low")
    def report() -> None:
        return None

    msg = report.message()
    assert (msg.queue, msg.priority) == ("reports", 2)
    assert report.message(priority="high", queue="urgent").priority == 0


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),  # missing a
        ((1, 2, 3), {}),  # too many
        ((1,), {"c": 3}),  # unknown keyword
        ((1,), {"a": 2}),  # a twice
    ],
)
def test_message_wrong_arguments(add: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ArgumentError, match="add"):
        add.message(*args, **kwargs)


def _kw_only(a: int, *, k: int) -> None: ...
def _defaults(a: int, b: int = 1, *, c: int = 2) -> None: ...
def _pos_only(a: int, /, b: int, *rest: int) -> None: ...
def _none() -> None: ...
def _var_kw(a: int, b: int, **kw: int) -> None: ...


@pytest.mark.parametrize("fn", [_kw_only, _defaults, _pos_only, _none, _var_kw])
def test_positional_calls_are_accepted_exactly_when_they_bind(app: Conveyor, fn: Any) -> None:
    """``message`` counts positional arguments instead of calling Signature.bind when it can:
    the count must accept and refuse exactly what bind does."""
    task = app.task(name=fn.__name__)(fn)
    for n in range(5):
        args = tuple(range(n))
        try:
            inspect.signature(fn).bind(*args)
            binds = True
        except TypeError:
            binds = False
        if binds:
            task.message(*args)
        else:
            with pytest.raises(ArgumentError, match=fn.__name__):
                task.message(*args)


def test_argument_error_is_a_type_error(add: Task[Any, Any]) -> None:
    with pytest.raises(TypeError):
        add.message()


def test_message_unserializable_argument(add: Task[Any, Any]) -> None:
    with pytest.raises(SerializationError, match=r"add: argument 1"):
        add.message(1, {2})
    with pytest.raises(SerializationError, match=r"add: argument 'b'"):
        add.message(1, b=dt.datetime.now(dt.UTC))


def test_message_payload_too_large(tmp_path: Path) -> None:
    application = Conveyor(f"sqlite:///{tmp_path}/x.db", max_payload=64)

    @application.task
    def echo(text: str) -> str:
        return text

    echo.message("x" * 10)
    with pytest.raises(PayloadTooLarge):
        echo.message("x" * 100)


def test_message_with_var_args_and_kwargs(app: Conveyor) -> None:
    @app.task
    def anything(*args: Any, **kwargs: Any) -> None:
        return None

    msg = anything.message(1, 2, x=3, priority="low", delay=1)
    assert decode_args(msg.payload, app.max_payload) == ([1, 2], {"x": 3})
    assert (msg.priority, msg.delay) == (2, 1.0)


def test_message_does_not_touch_the_store(tmp_path: Path) -> None:
    application = Conveyor(f"sqlite:///{tmp_path}/never.db")

    @application.task
    def noop() -> None:
        return None

    noop.message()
    assert not (tmp_path / "never.db").exists()


# --- configuration, repr, URLs ----------------------------------------------------------------------


def test_url_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("CONVEYOR_URL", url)
    assert Conveyor().url == url


def test_explicit_url_wins_over_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVEYOR_URL", "sqlite:///env.db")
    assert Conveyor(f"sqlite:///{tmp_path}/mine.db").url == f"sqlite:///{tmp_path}/mine.db"


def test_default_url_without_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default is the SQLite file conveyor.db of the current directory, resolved when the
    application is made: a later change of directory does not move the store."""
    monkeypatch.delenv("CONVEYOR_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    app = Conveyor()
    monkeypatch.chdir(tmp_path.parent)
    assert DEFAULT_URL == "sqlite:///conveyor.db"
    assert app.url == f"sqlite:///{tmp_path}/conveyor.db"
    app.broker.stats()
    assert (tmp_path / "conveyor.db").exists()
    app.close()


def test_a_relative_sqlite_url_is_made_absolute_with_its_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONVEYOR_URL", "sqlite:///data/../q.db?synchronous=full")
    assert Conveyor().url == f"sqlite:///{tmp_path}/q.db?synchronous=full"
    assert Conveyor(f"sqlite:///{tmp_path}/abs.db").url == f"sqlite:///{tmp_path}/abs.db"
    assert Conveyor("redis://127.0.0.1:6379/0").url == "redis://127.0.0.1:6379/0"


def test_empty_environment_falls_back_to_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVEYOR_URL", "")
    monkeypatch.chdir(tmp_path)
    assert Conveyor().url == f"sqlite:///{tmp_path}/conveyor.db"


def test_custom_priorities(tmp_path: Path) -> None:
    application = Conveyor(f"sqlite:///{tmp_path}/x.db", priorities={"now": 5, "later": 1})

    @application.task(priority="later")
    def job() -> None:
        return None

    assert job.priority == 1
    assert job.message(priority="now").priority == 0
    with pytest.raises(ConfigurationError):
        job.message(priority="normal")


def test_invalid_priorities_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        Conveyor(f"sqlite:///{tmp_path}/x.db", priorities={})


def test_repr_does_not_leak_password() -> None:
    text = repr(Conveyor("postgresql://admin:hunter2@db.example:5432/queue"))
    assert "hunter2" not in text
    assert "admin:***@db.example:5432" in text
    assert "tasks=0" in text


def test_repr_counts_tasks(app: Conveyor, add: Task[Any, Any]) -> None:
    assert "tasks=1" in repr(app)
    assert repr(add) == "<Task add queue=default>"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:secret@host", "redis://:***@host"),
        ("postgresql://u:p%40ss@db/x?sslmode=require", "postgresql://u:***@db/x?sslmode=require"),
        ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
        ("redis://user:@host", "redis://user:***@host"),
        # Issue 26, finding 3: credentials in the query and in libpq key=value strings.
        (
            "postgresql://u@host/db?password=pw1&sslmode=require",
            "postgresql://u@host/db?password=***&sslmode=require",
        ),
        ("redis://u@host/10?password=pw1", "redis://u@host/10?password=***"),
        (
            "postgresql:///db?host=h&sslpassword=pw1&passphrase=pw2",
            "postgresql:///db?host=h&sslpassword=***&passphrase=***",
        ),
        ("host=db user=app password=pw1 dbname=jobs", "host=db user=app password=*** dbname=jobs"),
        ("host=db password='pw 1' dbname=jobs", "host=db password=*** dbname=jobs"),
    ],
)
def test_redact_url_hides_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    "url", ["sqlite:///conveyor.db", "sqlite:////abs/path.db", "redis://user@host", "redis://host:6379"]
)
def test_redact_url_leaves_urls_without_password_alone(url: str) -> None:
    assert redact_url(url) == url


@pytest.mark.parametrize(
    "url",
    ["amqp://u:secret@host/0", "mysql://u:secret@host/db", "http://x", "conveyor.db", "", "sqlite3:///x.db"],
)
def test_open_broker_unknown_scheme(url: str) -> None:
    with pytest.raises(ConfigurationError, match="unsupported broker URL") as info:
        open_broker(url)
    assert "secret" not in str(info.value)


def test_broker_of_unknown_scheme_fails_on_first_use_only() -> None:
    application = Conveyor("amqp://guest:guest@localhost//")
    with pytest.raises(ConfigurationError):
        _ = application.broker


# --- ids ------------------------------------------------------------------------------------------

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def test_new_id_shape() -> None:
    value = new_id()
    assert len(value) == 26
    assert set(value) <= CROCKFORD


def test_new_id_unique_over_ten_thousand_calls() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == 10_000
    assert all(len(i) == 26 for i in ids)


def test_new_id_encodes_milliseconds_first(monkeypatch: pytest.MonkeyPatch) -> None:
    ms = 1_700_000_000_123
    monkeypatch.setattr("conveyor.ids.time", types.SimpleNamespace(time_ns=lambda: ms * 1_000_000 + 999_999))
    value = new_id()
    decoded = 0
    for char in value:
        decoded = decoded * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
    assert decoded >> 80 == ms


def test_new_id_sorts_by_creation_time_across_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"ms": 1_700_000_000_000}
    randomness = {"bytes": b"\xff" * 10}
    monkeypatch.setattr("conveyor.ids.time", types.SimpleNamespace(time_ns=lambda: clock["ms"] * 1_000_000))
    monkeypatch.setattr("conveyor.ids.os", types.SimpleNamespace(urandom=lambda n: randomness["bytes"][:n]))
    earlier = new_id()  # largest random part
    clock["ms"] += 1
    randomness["bytes"] = b"\x00" * 10
    later = new_id()  # smallest random part, one millisecond on
    assert earlier < later


def test_new_id_sorts_with_the_real_clock() -> None:
    import time

    ids = []
    for _ in range(5):
        ids.append(new_id())
        start = time.monotonic()
        while time.monotonic() - start < 0.002:
            pass
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


def test_cancel_answers_are_true_only_for_cancelled(tmp_path: Path) -> None:
    """``if job.cancel():`` keeps the meaning it had when cancel returned a bool."""
    app = Conveyor(f"sqlite:///{tmp_path}/c.db")

    @app.task
    def noop() -> None: ...

    job = noop.enqueue()
    first, second = job.cancel(), job.cancel()
    assert (first, bool(first)) == ("cancelled", True)
    assert (second, bool(second)) == ("finished", False)
    missing = app.job("no-such-job").cancel()
    assert (missing, bool(missing)) == ("missing", False)
    app.close()
