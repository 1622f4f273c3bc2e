"""A backend's connection failures as Conveyor's errors.

Every contract operation of a broker class decorated with :func:`guarded` turns the client
library's errors into :class:`~conveyor.errors.StoreUnavailable` (the store did not answer:
try again later) or :class:`~conveyor.errors.ConfigurationError` (the store refused us: a
password, a database name, a missing permission; trying again cannot help), each one line
naming the store with its password redacted. Other errors pass unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

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
    return StoreUnavailable(f"store {display} unavailable: {one_line(exc)}")


def refused(display: str, exc: BaseException, hint: str) -> ConfigurationError:
    return ConfigurationError(f"store {display} refused the connection: {one_line(exc)} ({hint})")


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
