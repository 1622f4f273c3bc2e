"""The least Redis ACL a Conveyor user needs, as data, so docs, tests and tools print one rule.

Every command the Redis broker sends, directly, through redis-py's connection handling or from
its Lua scripts, is listed with why; everything else is refused (``-@all``), and keys and
channels are limited to the store's prefix. ``SELECT`` is not granted: an ACL cannot limit
databases, so the user works in database 0 (redis-py sends ``SELECT`` only for another one).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

from conveyor.brokers.redis.url import DEFAULT_PREFIX, parse
from conveyor.errors import ConfigurationError

#: Commands every Conveyor process sends, with the reason (``command|subcommand`` for one
#: subcommand only). AUTH and HELLO are not listed: Redis allows them to every user.
COMMANDS: dict[str, str] = {
    "evalsha": "every operation is one Lua script",
    "script|load": "load the scripts into a server that lacks them (restarted, new)",
    "ping": "redis-py's connection health checks",
    "time": "the store's clock (scripts, the worker registry)",
    "subscribe": "idle workers wait for wake-ups on their queues' channels",
    "unsubscribe": "a waiting worker moves to other queues' channels",
    "publish": "scripts wake idle workers when they make work pending",
    "sadd": "the registry of queues",
    "smembers": "the registry of queues",
    "hset": "job records, idempotency keys, counts, the worker registry",
    "hget": "job records, idempotency keys",
    "hmget": "job records",
    "hgetall": "counts, listings, the worker registry",
    "hkeys": "counts, pauses",
    "hscan": "expire forgets idle limit keys and groups a page at a time",
    "hexists": "job records (replay into another queue), pauses",
    "exists": "acks and cancels look for job control's hash (cancel requests, snoozes) once per batch",
    "hsetnx": "pause (a second pause keeps the first one's time)",
    "hdel": "job records, idempotency keys, counts, the worker registry",
    "hincrby": "counts",
    "zadd": "pending, running, dead and finished indexes",
    "zrem": "pending, running, dead and finished indexes",
    "zremrangebyrank": "reserve takes the heads of pending indexes",
    "zcount": "due tasks per priority level",
    "zrange": "next due time, listings, replay and purge of the dead",
    "zrangebyscore": "reserve, reclaim, expire, listings",
    "zrevrange": "listings of the dead and finished",
    "zscore": "purge finds a corrupt record in the dead index",
    "object|encoding": "reserve keeps its lease index in skiplist encoding",
}

#: Commands needed only with an option, by option name.
OPTIONAL: dict[str, dict[str, str]] = {
    "wait_replicas": {"wait": "the URL's wait_replicas=N: WAIT for replicas after each enqueue"},
    "cluster": {
        "cluster|slots": "redis-py reads the cluster's layout",
        "command": "redis-py reads the command table to find keys' slots",
    },
    # redis-py names its library on each connection; a server without the command, or a user
    # refused it, is skipped silently by redis-py, but a refusal is logged in ACL LOG.
    "setinfo": {"client|setinfo": "redis-py names its library on connect (Redis 7.2 and later)"},
}

# The URL's prefix characters: none is special in an ACL key or channel pattern.
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def commands(options: Iterable[str] = ()) -> list[str]:
    """The granted commands, Conveyor's own then those of ``options`` (keys of OPTIONAL)."""
    out = list(COMMANDS)
    for option in options:
        if option not in OPTIONAL:
            raise ConfigurationError(f"unknown ACL option {option!r}: one of {', '.join(OPTIONAL)}")
        out += [c for c in OPTIONAL[option] if c not in out]
    return out


def rule(
    prefix: str = DEFAULT_PREFIX,
    password: str = "PASSWORD",
    options: Iterable[str] = (),
    extra: Iterable[str] = (),
) -> list[str]:
    """The ``ACL SETUSER <user>`` arguments: reset the user, then grant the least.

    Args:
        prefix: the URL's ``prefix``; keys and channels are limited to ``<prefix>:*``.
        password: set as ``>password`` (pass ``#<sha256 hex>`` to store only its hash).
        options: keys of OPTIONAL the deployment uses.
        extra: further rules, e.g. the commands and keys of the app's own effects.
    """
    if not _PREFIX.fullmatch(prefix):
        raise ConfigurationError(f"invalid prefix {prefix!r}: letters, digits and _ . : -")
    secret = password if password.startswith("#") else f">{password}"
    return [
        "reset",
        "on",
        secret,
        f"~{prefix}:*",
        f"&{prefix}:*",
        "-@all",
        *(f"+{c}" for c in commands(options)),
        *extra,
    ]


def setuser(
    user: str = "conveyor",
    prefix: str = DEFAULT_PREFIX,
    password: str = "PASSWORD",
    options: Iterable[str] = (),
    extra: Iterable[str] = (),
) -> str:
    """The whole ``ACL SETUSER`` line, as ``docs/backends.md`` and ``docs/security.md`` print it."""
    if not _NAME.fullmatch(user):
        raise ConfigurationError(f"invalid ACL user name {user!r}")
    return " ".join(["ACL", "SETUSER", user, *rule(prefix, password, options, extra)])


def for_url(url: str, user: str | None = None) -> str:
    """The ``ACL SETUSER`` line for the store at ``url``: its prefix, its user name (``user``,
    else the URL's, else ``conveyor``) and the options its ``cluster`` and ``wait_replicas`` ask
    for. The password stays a placeholder: the URL's is never printed."""
    target = parse(url)
    parts = urlsplit(url)
    if parts.path not in ("", "/", "/0"):
        raise ConfigurationError(
            f"{target.display} names a database other than 0: an ACL cannot limit databases, so the "
            "least rule grants no SELECT; use database 0 with a prefix of its own, or a server of its own"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    options = ["cluster"] if target.cluster else []
    if query.get("wait_replicas", "0").strip() not in ("", "0"):
        options.append("wait_replicas")
    return setuser(user or unquote(parts.username or "") or "conveyor", target.prefix, options=options)
