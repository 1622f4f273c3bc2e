"""Store URLs: ``postgresql://user:password@host:port/db?schema=NAME`` plus any libpq options."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import make_conninfo

from conveyor.brokers import redact_url
from conveyor.errors import ConfigurationError

DEFAULT_SCHEMA = "conveyor"
# Leaves room for the channel prefix within PostgreSQL's 63-byte identifiers.
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")
#: libpq settings given unless the URL sets them.
_DEFAULTS = {"application_name": "conveyor", "connect_timeout": "10"}


@dataclass(frozen=True)
class Target:
    """Where a broker's tables live: a database (``conninfo``) and a schema in it."""

    #: The URL without ``schema`` and with our defaults, for psycopg; holds the password, so
    #: never log it.
    conninfo: str = field(repr=False)
    schema: str = ""
    #: The URL with its password replaced, safe to log.
    display: str = ""

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
    for item in parts.query.split("&") if parts.query else ():
        name, _, value = item.partition("=")
        if unquote(name) == "schema":
            schemas.append(unquote(value))
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
    try:
        conninfo = make_conninfo(parts._replace(query="&".join(kept)).geturl(), **defaults)
    except psycopg.ProgrammingError as exc:  # its message quotes the option, not the password
        raise ConfigurationError(f"invalid PostgreSQL URL {display!r}: {exc}") from None
    return Target(conninfo=conninfo, schema=schema, display=display)
