"""A backend's connection failures as Conveyor's errors.

Every contract operation of a broker class decorated with :func:`guarded` turns the client
library's errors into :class:`~conveyor.errors.StoreUnavailable` (the store did not answer:
try again later) or :class:`~conveyor.errors.ConfigurationError` (the store refused us: a
password, a database name, a missing permission; trying again cannot help), each one line
naming the store with its password redacted. Other errors pass unchanged.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from conveyor.errors import ConfigurationError, ConveyorError, StoreUnavailable

B = TypeVar("B", bound=type)

#: The broker contract's operations (see base.Broker).
OPERATIONS = (
    "enqueue",
    "reserve",
    "wait",
    "ack",
    "extend",
    "release",
    "reclaim",
    "cancel",
    "request_cancel",
    "cancelling",
    "wait_cancel",
    "get",
    "stats",
    "jobs",
    "dead",
    "beat",
    "workers",
    "replay",
    "purge",
    "expire",
    "pause",
    "resume",
    "paused",
)


def one_line(exc: BaseException) -> str:
    """``Type: message`` with the message's lines and runs of spaces joined."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def unavailable(display: str, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"store {display} unavailable: {reason(display, exc) or one_line(exc)}")


def refused(display: str, exc: BaseException, hint: str) -> ConfigurationError:
    said = reason(display, exc)
    return ConfigurationError(
        f"store {display} refused the connection: {said}" if said else
        f"store {display} refused the connection: {one_line(exc)} ({hint})"
    )  # fmt: skip


_DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "postgres": 5432, "postgresql": 5432}
_NAMED = re.compile(r'(database|role|user) "([^"]{1,200})"')


def reason(display: str, exc: BaseException) -> str | None:
    """What a failed connection means, in words a user can act on (None when it is none of the
    usual causes): refused, no answer, unknown host, a wrong or missing password, an unknown
    database or user. Read from the client library's message, which names the cause."""
    text = " ".join(str(exc).split())
    low = text.lower()
    parts = urlsplit(display)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        port = None
    host = parts.hostname or "localhost"
    where = f"{host}:{port}" if port else host
    named = _NAMED.search(text)
    if "does not exist" in low and named:
        kind, name = named.groups()
        if kind == "database":
            return (
                f'database "{name}" does not exist on {where}: create it (createdb -h {host}'
                f"{f' -p {port}' if port else ''} {name}) or correct the database in the URL"
            )
        return f'user "{name}" does not exist on {where}: create it or correct the user in the URL'
    if "password authentication failed" in low or "wrongpass" in low or "invalid username-password" in low:
        return f"authentication failed at {where}: wrong user or password; correct them in the URL"
    if "no password supplied" in low or "noauth" in low or "authentication required" in low:
        return f"{where} requires a password: put it in the URL (scheme://user:PASSWORD@host:port/...)"
    if "no pg_hba.conf entry" in low:
        return f"{where} does not accept this user, database or host (pg_hba.conf): ask its administrator"
    if "connection refused" in low or isinstance(_cause(exc, ConnectionRefusedError), ConnectionRefusedError):
        return f"connection refused at {where}: is the server running and listening on that host and port?"
    if "name or service not known" in low or "could not translate host name" in low or "nodename nor" in low:
        return f"host {host!r} not found: correct the host in the URL"
    if "timeout expired" in low or "timed out" in low or "timeout connecting" in low:
        return f"no answer from {where} within the connect timeout: a wrong host, a firewall, or a server too busy"
    return None


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``'s chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def guarded(cls: B) -> B:
    """Wrap the contract operations ``cls`` defines so that its ``_translate(exc)`` (an error
    to raise instead, or None to let ``exc`` through) sees every error they raise."""
    for name in OPERATIONS:
        method = cls.__dict__.get(name)
        if method is not None:
            setattr(cls, name, _guard(method))
    return cls


def _guard(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ConveyorError:
            raise
        except Exception as exc:
            translated = self._translate(exc)
            if translated is None:
                raise
            raise translated from exc

    return call
