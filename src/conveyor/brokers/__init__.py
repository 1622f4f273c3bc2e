"""Storage backends behind one contract; ``open_broker`` picks one from a URL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

from conveyor.brokers.base import Broker, Lease
from conveyor.errors import ConfigurationError

__all__ = ["Broker", "Lease", "is_memory_url", "open_broker", "redact_url"]


def redact_url(url: str) -> str:
    """The URL with every credential replaced by ``***``: the password of its user info, and
    the value of each secret-named parameter (``password=``, ``sslpassword=``, ``token=``...),
    in a URL's query or in a libpq ``key=value`` string alike."""
    from conveyor.redact import Redactor

    return Redactor().line(url)


def is_memory_url(url: str) -> bool:
    """Whether ``url`` names an in-memory store (``sqlite:///:memory:``), private to a process."""
    parts = urlsplit(url)
    return parts.scheme == "sqlite" and parts.path == "/:memory:"


def open_broker(url: str, retention: float = 86400.0) -> Broker:
    """A broker for ``url``: ``sqlite:///path.db`` (relative), ``sqlite:////abs/path.db``,
    ``sqlite:///:memory:`` (tests: in this process's memory),
    ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS) or ``postgresql://...``."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from conveyor.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url, retention=retention)
    if scheme in ("redis", "rediss"):
        with _extra("redis", "redis"):
            from conveyor.brokers.redis import RedisBroker

        return RedisBroker(url, retention=retention)
    if scheme in ("postgres", "postgresql"):
        with _extra("postgres", "psycopg"):
            from conveyor.brokers.postgres import PostgresBroker

        return PostgresBroker(url, retention=retention)
    raise ConfigurationError(
        f"unsupported broker URL {redact_url(url)!r}: expected sqlite://, redis://, rediss:// or postgresql://"
    )


@contextlib.contextmanager
def _extra(extra: str, library: str) -> Iterator[None]:
    """A missing client library as a ConfigurationError that says what to install."""
    try:
        yield
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] not in (library, f"{library}_pool"):
            raise
        raise ConfigurationError(
            f"this store needs the {library} library, missing here: pip install 'conveyor-queue[{extra}]'"
        ) from None
