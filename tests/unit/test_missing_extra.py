"""A store URL whose client library is not installed: one line saying what to install."""

from __future__ import annotations

import sys

import pytest

from conveyor.brokers import open_broker
from conveyor.errors import ConfigurationError


@pytest.mark.parametrize(
    ("url", "library", "extra"),
    [("redis://127.0.0.1:6379/0", "redis", "redis"), ("postgresql://h/db", "psycopg", "postgres")],
)
def test_a_missing_client_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str, library: str, extra: str
) -> None:
    for name in list(sys.modules):
        if name.split(".")[0] == library or name.startswith(
            ("conveyor.brokers.redis", "conveyor.brokers.postgres")
        ):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, library, None)  # import fails as if not installed

    with pytest.raises(ConfigurationError) as caught:
        open_broker(url)
    assert f"pip install 'conveyor-queue[{extra}]'" in str(caught.value)


def test_tracing_without_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name.split(".")[0] == "opentelemetry" or name == "conveyor.otel":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails as if not installed

    with pytest.raises(ConfigurationError) as caught:
        import conveyor.otel  # noqa: F401
    assert "pip install 'conveyor-queue[otel]'" in str(caught.value)
