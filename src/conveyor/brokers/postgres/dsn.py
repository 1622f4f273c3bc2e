"""Store URLs: ``postgresql://user:password@host:port/db?schema=NAME`` plus any libpq options.

Conveyor's sessions get timeouts unless the URL sets them, so that a worker cut off from the
database (mid-transaction included) neither waits forever nor keeps rows locked for long (see
docs/reliability.md): libpq's ``connect_timeout``, TCP keepalives and ``tcp_user_timeout``
(Linux); the server's ``statement_timeout``, ``lock_timeout`` and
``idle_in_transaction_session_timeout``, given as URL parameters of those names (sent in the
session's ``options``, which must not set them too); and ``command_timeout``, Conveyor's own
bound in seconds on one operation, after which the client cuts the connection.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import make_conninfo

from conveyor.brokers import redact_url
from conveyor.errors import ConfigurationError

DEFAULT_SCHEMA = "conveyor"
# Leaves room for the channel prefix within PostgreSQL's 63-byte identifiers.
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")
#: libpq settings given unless the URL sets them. Keepalives find a silent peer of an idle
#: session in idle + interval x count = 11 s; tcp_user_timeout (ms) drops a connection whose
#: sent data has gone unacknowledged that long.
_DEFAULTS = {
    "application_name": "conveyor",
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
} | ({"tcp_user_timeout": "10000"} if sys.platform.startswith("linux") else {})
#: Server settings of Conveyor's sessions, given unless the URL sets them. A session whose
#: client is gone ends its statement, lock wait or open transaction within these (15 s + 10 s
#: at worst), so its row locks are gone before a 30 s lease (the worker default) expires.
SERVER_DEFAULTS = {
    "statement_timeout": "15s",
    "lock_timeout": "10s",
    "idle_in_transaction_session_timeout": "10s",
}
#: Seconds one operation may take before the client cuts its connection (a reply that never
#: comes: libpq itself has no read timeout).
DEFAULT_COMMAND_TIMEOUT = 60.0
_GUC_VALUE = re.compile(r"^[0-9]+(us|ms|s|min|h|d)?$")


@dataclass(frozen=True)
class Target:
    """Where a broker's tables live: a database (``conninfo``) and a schema in it."""

    #: The URL without ``schema`` and with our defaults, for psycopg; holds the password, so
    #: never log it.
    conninfo: str = field(repr=False)
    schema: str = ""
    #: The URL with its password replaced, safe to log.
    display: str = ""
    #: Seconds one operation may take before the connection is cut (0: never).
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT

    @property
    def ident(self) -> str:
        """The schema as a quoted SQL identifier."""
        return '"' + self.schema + '"'

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this schema's wake-ups; the payload is a queue name."""
        return f"conveyor.{self.schema}"


def parse(url: str) -> Target:
    """Split a store URL into the libpq URL and the schema; the rest of the query passes through."""
    display = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigurationError(f"not a PostgreSQL URL: {display!r}")
    kept: list[str] = []
    schemas: list[str] = []
    server = dict(SERVER_DEFAULTS)
    options = ""
    command_timeout = DEFAULT_COMMAND_TIMEOUT
    for item in parts.query.split("&") if parts.query else ():
        name, _, value = item.partition("=")
        name = unquote(name)
        if name == "schema":
            schemas.append(unquote(value))
        elif name in SERVER_DEFAULTS:
            if not _GUC_VALUE.fullmatch(unquote(value)):
                raise ConfigurationError(
                    f"invalid {name}={unquote(value)!r} in {display!r}: e.g. 15s or 500ms"
                )
            server[name] = unquote(value)
        elif name == "command_timeout":
            command_timeout = _seconds(name, unquote(value), display)
        elif name == "options":
            options = unquote(value)
            for setting in SERVER_DEFAULTS:
                if setting in options:
                    raise ConfigurationError(
                        f"set {setting} as a URL parameter of its own, not in options: {display!r}"
                    )
        else:
            kept.append(item)  # verbatim: libpq decodes its own options
    if len(schemas) > 1:
        raise ConfigurationError(f"schema given more than once in {display!r}")
    schema = schemas[0] if schemas else DEFAULT_SCHEMA
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigurationError(
            f"invalid schema {schema!r} in {display!r}: letters, digits and _, at most 48 characters"
        )
    given = {unquote(item.partition("=")[0]) for item in kept}
    defaults = {k: v for k, v in _DEFAULTS.items() if k not in given}
    defaults["options"] = " ".join([options, *(f"-c {k}={v}" for k, v in server.items())]).strip()
    try:
        conninfo = make_conninfo(parts._replace(query="&".join(kept)).geturl(), **defaults)
    except psycopg.ProgrammingError as exc:  # its message quotes the option, not the password
        raise ConfigurationError(f"invalid PostgreSQL URL {display!r}: {exc}") from None
    return Target(conninfo=conninfo, schema=schema, display=display, command_timeout=command_timeout)


def _seconds(name: str, value: str, display: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ConfigurationError(f"invalid {name}={value!r} in {display!r}: seconds, 0 for none")
    return seconds
