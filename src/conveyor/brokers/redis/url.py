"""Store URLs: redis-py's ``redis://`` / ``rediss://`` URL plus Conveyor's own options.

redis-py reads its own options from the URL (``socket_connect_timeout``, ``socket_timeout``,
``health_check_interval``, ...) over the broker's defaults; Conveyor's are ``prefix``,
``cluster`` and ``retries`` (how many times a call whose connection failed is sent again).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from conveyor.brokers import redact_url
from conveyor.errors import ConfigurationError

DEFAULT_PREFIX = "conveyor"
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Target:
    """Where a broker's keys live."""

    #: The URL without Conveyor's options, for redis-py; holds the password, so never log it.
    url: str = field(repr=False)
    #: The URL with its password replaced, safe to log.
    display: str = ""
    #: First part of every key name (``<prefix>:{<queue>}:...``).
    prefix: str = DEFAULT_PREFIX
    #: Connect with redis-py's ``RedisCluster``.
    cluster: bool = False
    #: After each enqueue, ``WAIT`` for this many replicas, at most this many milliseconds.
    wait: tuple[int, int] | None = None
    #: Times a call whose connection failed is sent again (None: the broker's default).
    retries: int | None = None


def parse(url: str) -> Target:
    """Split ``url`` into redis-py's URL and Conveyor's ``prefix`` and ``cluster`` options."""
    display = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"not a Redis URL: {display!r}")
    kept: list[tuple[str, str]] = []
    prefix, cluster, retries = DEFAULT_PREFIX, False, None
    waits: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "prefix":
            prefix = value
        elif name == "cluster":
            if value.lower() not in _TRUE | _FALSE:
                raise ConfigurationError(f"invalid cluster={value!r} in {display!r}: use 1 or 0")
            cluster = value.lower() in _TRUE
        elif name in ("wait_replicas", "wait_timeout"):
            waits[name] = value
        elif name == "retries":
            if not value.isdigit():
                raise ConfigurationError(f"invalid retries={value!r} in {display!r}: a count, 0 or more")
            retries = int(value)
        else:
            kept.append((name, value))
    if not _PREFIX.fullmatch(prefix):
        raise ConfigurationError(
            f"invalid prefix {prefix!r} in {display!r}: letters, digits and _ . : -, at most 64 characters"
        )
    if cluster and parts.path not in ("", "/", "/0"):
        raise ConfigurationError(f"a Redis Cluster has only database 0: {display!r}")
    return Target(
        url=parts._replace(query=urlencode(kept)).geturl(),
        display=display,
        prefix=prefix,
        cluster=cluster,
        wait=_wait(waits, display),
        retries=retries,
    )


def _wait(options: dict[str, str], display: str) -> tuple[int, int] | None:
    """``wait_replicas=N`` (default 0: do not wait) and ``wait_timeout=MS`` (default 1000)."""
    numbers: dict[str, int] = {}
    for name, value in options.items():
        if not value.isdigit():
            raise ConfigurationError(f"invalid {name}={value!r} in {display!r}: a whole number")
        numbers[name] = int(value)
    replicas, timeout = numbers.get("wait_replicas", 0), numbers.get("wait_timeout", 1000)
    if "wait_timeout" in numbers and not replicas:
        raise ConfigurationError(f"wait_timeout without wait_replicas in {display!r}")
    if replicas and timeout < 1:
        raise ConfigurationError(f"wait_timeout must be at least 1 ms in {display!r}: 0 waits forever")
    return (replicas, timeout) if replicas else None
