"""Versioned schema migrations.

``migrations/NNNN_name.sql`` are applied in version order, each recorded in the schema's
``conveyor_migrations`` table; a fresh schema gets ``schema.sql`` (the current schema as a whole)
and every version recorded at once. All of it runs in one transaction holding an advisory lock
on the schema's name, so concurrent migrators (workers starting together) apply each version
once: the others wait for the lock, then find nothing left to do. DDL is transactional in
PostgreSQL, so a migration that fails leaves the schema as it was.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from conveyor.brokers.postgres.dsn import Target, parse
from conveyor.errors import ConfigurationError

_PACKAGE = "conveyor.brokers.postgres"
_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped, by version."""
    found = []
    for entry in resources.files(_PACKAGE).joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def latest() -> int:
    """The version the code expects."""
    return migrations()[-1].version


def fresh_schema() -> str:
    """The current schema as one script (with ``{schema}`` to fill in)."""
    return resources.files(_PACKAGE).joinpath("schema.sql").read_text(encoding="utf-8")


def lock_key(schema: str) -> int:
    """The advisory lock serializing migrations of ``schema`` (a signed 64-bit integer)."""
    digest = hashlib.blake2b(f"conveyor.migrate:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def migrate(url: str) -> list[int]:
    """Create or upgrade the store's schema; return the versions applied (empty if up to date)."""
    target = parse(url)
    with psycopg.connect(target.conninfo, autocommit=True) as conn:
        return apply(conn, target)


def ensure(target: Target) -> None:
    """Migrate unless the schema is at the version this code expects (one read if it is), so a
    role without the right to change the schema can still open an up-to-date store."""
    with psycopg.connect(target.conninfo, autocommit=True) as conn:
        try:
            (current,) = conn.execute(
                sql.SQL("SELECT max(version) FROM {}.conveyor_migrations").format(
                    sql.Identifier(target.schema)
                )
            ).fetchone() or (None,)
        except psycopg.errors.UndefinedTable:
            current = None
        if current is None or current < latest():
            try:
                apply(conn, target)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise ConfigurationError(
                    f"schema {target.schema!r} is at version {current or 0}, this code needs {latest()},"
                    f" and this role may not migrate it ({exc}): run `conveyor migrate URL` as a role"
                    " that may"
                ) from None


def apply(conn: psycopg.Connection[Any], target: Target, fresh_install: bool = True) -> list[int]:
    """:func:`migrate` on an open autocommit connection.

    ``fresh_install``: a schema without migrations gets ``schema.sql`` at once (False: every
    migration in order, which the tests compare with it).
    """
    schema = sql.Identifier(target.schema)
    with conn.transaction():
        # A migration may take long on a big table, and so may the wait for another's.
        conn.execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(target.schema)])
        # Not CREATE SCHEMA IF NOT EXISTS: that needs the CREATE privilege on the database
        # even when the schema exists.
        if conn.execute("SELECT to_regnamespace(%s)", [target.ident]).fetchone() == (None,):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        table = f"{target.ident}.conveyor_migrations"
        fresh = conn.execute("SELECT to_regclass(%s)", [table]).fetchone() == (None,)
        if fresh:
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {}.conveyor_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(schema)
            )
        rows = conn.execute(sql.SQL("SELECT version FROM {}.conveyor_migrations").format(schema))
        done = {version for (version,) in rows}
        pending = [m for m in migrations() if m.version not in done]
        if fresh and fresh_install:
            conn.execute(_script(fresh_schema(), target))
        else:
            for m in pending:
                conn.execute(_script(m.sql, target))
        for m in pending:
            conn.execute(
                sql.SQL("INSERT INTO {}.conveyor_migrations (version, name) VALUES (%s, %s)").format(schema),
                [m.version, m.name],
            )
    return [m.version for m in pending]


def _script(text: str, target: Target) -> bytes:
    # A script of several statements runs as one simple query (no parameters, so no placeholders).
    return text.replace("{schema}", target.ident).encode()
