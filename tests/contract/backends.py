"""The backends the contract suite runs against.

A backend joins the suite with one entry in ``BACKENDS``: how to make a fresh, isolated store
(returning the URL every broker handle and worker process opens) and which optional
capabilities it has. This module imports only the standard library and ``conveyor`` so worker
subprocesses of the race test can import it too.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.brokers import Broker, open_broker
from conveyor.records import AckStatus, Outcome

#: Retention of finished jobs and their keys in every broker the suite opens.
RETENTION = 3600.0


@dataclass(frozen=True)
class Backend:
    name: str
    #: Create a fresh store isolated from every other test; return its URL.
    new_store: Callable[[Path], str]
    #: ``Outcome.effects`` are SQL statements committed with the ack (the transactional outbox).
    sql_effects: bool = False
    #: Run one SQL statement on the store outside the broker, returning its rows (SQL backends).
    run_sql: Callable[[str, str, Sequence[Any]], list[tuple[Any, ...]]] | None = None
    #: A connection to the store with a transaction open, for ``enqueue(..., connection=)``:
    #: commits when the block ends, rolls back if it raises (SQL backends).
    transaction: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None
    #: Remove the store made by ``new_store`` at teardown (stores that outlive ``tmp_path``).
    drop_store: Callable[[str], None] | None = None
    #: Write a worker registry entry as raw bytes, listed until ``expires`` (Unix time), past the
    #: broker: ``(url, worker id, info bytes, expires)``; False if the store cannot hold those
    #: bytes (PostgreSQL's jsonb column takes JSON only).
    write_worker: Callable[[str, str, bytes, float], bool] | None = None
    #: How many entries the store keeps for the groups and limit keys of a queue, past the
    #: broker: ``(url, queue)``; rows on SQL stores, hash fields and zset members on Redis.
    limit_state: Callable[[str, str], int] | None = None
    #: Other processes can open the store (False: a store in the test process's memory).
    processes: bool = True
    #: The limit state of an SQL store by name, past the broker: ``(groups, keys)`` of ``url``,
    #: the groups by name (``limits.group_of``, without the turn of jobs without limits) and the
    #: limit keys that have a record (test_limits_idle).
    limit_sets: Callable[[str], tuple[set[str], set[str]]] | None = None

    def open(self, url: str, retention: float = RETENTION) -> Broker:
        return open_broker(url, retention=retention)


def _sqlite_store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/c.db"


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _sqlite_sql(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(_sqlite_path(url), isolation_level=None, timeout=30)
    try:
        return db.execute(statement, params).fetchall()
    finally:
        db.close()


@contextlib.contextmanager
def _sqlite_transaction(url: str) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(_sqlite_path(url), isolation_level=None, timeout=30)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()


def _sqlite_worker(url: str, worker_id: str, info: bytes, expires: float) -> bool:
    _sqlite_sql(
        url,
        "INSERT OR REPLACE INTO conveyor_workers (id, info, expires) VALUES (?, ?, ?)",
        (worker_id, info, expires),
    )
    return True


def _sql_limit_state(
    run_sql: Callable[[str, str, Sequence[Any]], list[tuple[Any, ...]]], *tables: str
) -> Callable[[str, str], int]:
    def count(url: str, queue: str) -> int:
        return sum(run_sql(url, f"SELECT count(*) FROM {t} WHERE queue = ?", (queue,))[0][0] for t in tables)

    return count


def _sql_limit_sets(
    run_sql: Callable[[str, str, Sequence[Any]], list[tuple[Any, ...]]], groups: str, keys: str
) -> Callable[[str], tuple[set[str], set[str]]]:
    def names(url: str) -> tuple[set[str], set[str]]:
        named = {g for (g,) in run_sql(url, f"SELECT grp FROM {groups} WHERE grp <> ''", ())}
        return named, {k for (k,) in run_sql(url, f"SELECT key FROM {keys}", ())}

    return names


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(
        "sqlite",
        _sqlite_store,
        sql_effects=True,
        run_sql=_sqlite_sql,
        transaction=_sqlite_transaction,
        write_worker=_sqlite_worker,
        limit_state=_sql_limit_state(_sqlite_sql, "conveyor_groups", "conveyor_limits", "conveyor_waiters"),
        limit_sets=_sql_limit_sets(_sqlite_sql, "conveyor_groups", "conveyor_limits"),
    ),
    # "redis": Backend("redis", _redis_store),  # e.g. a fresh key prefix / database per test
}


# -- SQLite in memory (sqlite:///:memory:): a named memory database of the test process --------

#: A connection holding each test's memory database open from new_store to drop_store, so SQL
#: run before the first broker opens (or after the last closes) finds the same database.
_MEMORY_KEEPERS: dict[str, sqlite3.Connection] = {}


def _memory_uri(url: str) -> str:
    return f"file:conveyor-{url.partition('name=')[2]}?mode=memory&cache=shared"


def _memory_connect(url: str) -> sqlite3.Connection:
    db = sqlite3.connect(_memory_uri(url), uri=True, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA read_uncommitted = 1")
    return db


def _memory_store(tmp_path: Path) -> str:
    url = f"sqlite:///:memory:?name=ct-{os.urandom(5).hex()}"
    _MEMORY_KEEPERS[url] = _memory_connect(url)
    return url


def _memory_drop(url: str) -> None:
    _MEMORY_KEEPERS.pop(url).close()


def _memory_sql(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    db = _memory_connect(url)
    try:
        return db.execute(statement, params).fetchall()
    finally:
        db.close()


@contextlib.contextmanager
def _memory_transaction(url: str) -> Iterator[sqlite3.Connection]:
    db = _memory_connect(url)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()


def _memory_worker(url: str, worker_id: str, info: bytes, expires: float) -> bool:
    _memory_sql(
        url,
        "INSERT OR REPLACE INTO conveyor_workers (id, info, expires) VALUES (?, ?, ?)",
        (worker_id, info, expires),
    )
    return True


BACKENDS["sqlite-memory"] = Backend(
    "sqlite-memory",
    _memory_store,
    sql_effects=True,
    run_sql=_memory_sql,
    transaction=_memory_transaction,
    drop_store=_memory_drop,
    write_worker=_memory_worker,
    processes=False,
    limit_state=_sql_limit_state(_memory_sql, "conveyor_groups", "conveyor_limits", "conveyor_waiters"),
    limit_sets=_sql_limit_sets(_memory_sql, "conveyor_groups", "conveyor_limits"),
)


# -- PostgreSQL: a fresh schema per test, dropped at teardown ---------------------------------

POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_store(tmp_path: Path) -> str:
    from conveyor.brokers.postgres import migrate

    schema = f"conveyor_test_{os.urandom(5).hex()}"
    # The search_path lets the suite's unqualified user table ``t`` live in the test's schema.
    url = f"{POSTGRES_URL}?schema={schema}&options=-csearch_path%3D{schema}"
    migrate(url)
    return url


def _pg_connect(url: str, autocommit: bool = False) -> Any:
    import psycopg

    from conveyor.brokers.postgres.dsn import parse

    return psycopg.connect(parse(url).conninfo, autocommit=autocommit)


def _pg_sql(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with _pg_connect(url, autocommit=True) as conn:
        cur = conn.execute(statement.replace("?", "%s") if params else statement, params or None)
        return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def _pg_transaction(url: str) -> Iterator[Any]:
    with _pg_connect(url) as conn:  # commits when the block ends, rolls back if it raises
        yield conn


def _pg_drop(url: str) -> None:
    from conveyor.brokers.postgres.dsn import parse

    with _pg_connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{parse(url).schema}" CASCADE')


@dataclass(frozen=True)
class _Postgres(Backend):
    def open(self, url: str, retention: float = RETENTION) -> Broker:
        import msgspec

        from conveyor.brokers.postgres import PostgresBroker

        class QmarkEffects(PostgresBroker):
            """The suite writes effects in sqlite3's placeholders (``?``), psycopg's are ``%s``."""

            def ack(self, outcomes: Sequence[Outcome], now: float | None = None) -> list[AckStatus]:
                adapted = [
                    msgspec.structs.replace(
                        o, effects=tuple((s.replace("?", "%s"), *a) for s, *a in o.effects)
                    )
                    for o in outcomes
                ]
                return super().ack(adapted, now)

        return QmarkEffects(url, retention=retention)


def _pg_worker(url: str, worker_id: str, info: bytes, expires: float) -> bool:
    import psycopg

    from conveyor.brokers.postgres.dsn import parse

    statement = (
        f'INSERT INTO "{parse(url).schema}".workers (id, info, expires) VALUES (%s, %s::jsonb, %s)'
        " ON CONFLICT (id) DO UPDATE SET info = excluded.info, expires = excluded.expires"
    )
    try:
        with _pg_connect(url, autocommit=True) as conn:
            conn.execute(statement, (worker_id, info.decode(), expires))
    except (
        UnicodeDecodeError,
        psycopg.errors.InvalidTextRepresentation,
        psycopg.errors.UntranslatableCharacter,
        psycopg.errors.StatementTooComplex,
    ):
        return False
    return True


# Registered whether or not psycopg is installed: without it, these tests fail, never vanish.
BACKENDS["postgres"] = _Postgres(
    "postgres",
    _pg_store,
    sql_effects=True,
    run_sql=_pg_sql,
    transaction=_pg_transaction,
    drop_store=_pg_drop,
    write_worker=_pg_worker,
    limit_state=_sql_limit_state(_pg_sql, "limit_groups", "limit_keys", "limit_waiters"),
    limit_sets=_sql_limit_sets(_pg_sql, "limit_groups", "limit_keys"),
)


# -- Redis: a fresh key prefix per test in a database of its own, deleted at teardown ---------

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_CONTRACT", "redis://127.0.0.1:6379/9")


def _redis_store(tmp_path: Path) -> str:
    return f"{REDIS_URL}?prefix=ct-{os.urandom(5).hex()}"


def _redis_drop(url: str) -> None:
    from redis.client import Redis

    from conveyor.brokers.redis.url import parse

    target = parse(url)
    client = Redis.from_url(target.url)
    try:
        keys = list(client.scan_iter(match=f"{target.prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])
    finally:
        client.close()


def _redis_worker(url: str, worker_id: str, info: bytes, expires: float) -> bool:
    """HSET the registry entry as the broker stores it ("<expires> <info>"), as the store's own
    user (the ACL backend's user may write its prefix), on a cluster through a cluster client."""
    from redis.client import Redis
    from redis.cluster import RedisCluster

    from conveyor.brokers.redis.url import parse

    target = parse(url)
    client: Any = RedisCluster.from_url(target.url) if target.cluster else Redis.from_url(target.url)
    try:
        client.hset(f"{target.prefix}:workers", worker_id, repr(expires).encode() + b" " + info)
    finally:
        client.close()
    return True


def _redis_limit_state_with(client: Any, prefix: str, queue: str) -> int:
    """Fields of the queue's grules and limits hashes (but the flag that it had groups), members
    of its groups zsets and fields of its sweep cursors (levels 0 to 9)."""
    base = f"{prefix}:{{{queue}}}"
    fields = [f for f in client.hkeys(f"{base}:limits") if f != b"\x1fg"]
    levels = sum(client.zcard(f"{base}:groups:{level}") for level in range(10))
    return client.hlen(f"{base}:grules") + len(fields) + levels + client.hlen(f"{base}:sweep")


def _redis_limit_state(url: str, queue: str) -> int:
    from redis.client import Redis

    from conveyor.brokers.redis.url import parse

    target = parse(url)
    client = Redis.from_url(target.url)
    try:
        return _redis_limit_state_with(client, target.prefix, queue)
    finally:
        client.close()


def _redis_limit_sets(url: str) -> tuple[set[str], set[str]]:
    """The groups with rules (fields of every queue's grules hash) and the limit keys with a record
    (the ``<key>`` of the ``<key>\\31<attr>`` fields of every queue's limits hash)."""
    from redis.client import Redis

    from conveyor.brokers.redis.url import parse

    target = parse(url)
    client = Redis.from_url(target.url)
    try:
        groups = {g.decode() for h in client.scan_iter(f"{target.prefix}:*:grules") for g in client.hkeys(h)}
        keys = {
            f.decode().rpartition("\x1f")[0]
            for h in client.scan_iter(f"{target.prefix}:*:limits")
            for f in client.hkeys(h)
            if f != b"\x1fg"
        }
        return groups, keys
    finally:
        client.close()


BACKENDS["redis"] = Backend(
    "redis",
    _redis_store,
    drop_store=_redis_drop,
    write_worker=_redis_worker,
    limit_state=_redis_limit_state,
    limit_sets=_redis_limit_sets,
)


def _redis_acl_store(tmp_path: Path) -> str:
    """A store on a private Redis, as a user granted only Conveyor's least ACL for its prefix."""
    from redis_servers import ACL_PASSWORD, ACL_PREFIX, ACL_USER, acl_refusals, acl_server

    server = acl_server()
    acl_refusals(server)  # start the test with an empty ACL LOG
    return f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{server.port}/0?prefix={ACL_PREFIX}:{os.urandom(5).hex()}"


def _redis_acl_drop(url: str) -> None:
    """Delete the store's keys (as the server's admin: the user may not SCAN), then fail the test
    if the user was refused anything meanwhile: a command the broker needs is missing from the ACL."""
    from redis_servers import acl_refusals, acl_server

    from conveyor.brokers.redis.url import parse

    server = acl_server()
    refused = acl_refusals(server)
    prefix = parse(url).prefix
    client = server.client()
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])
    finally:
        client.close()
    assert not refused, "the least ACL refused what the broker sent:\n" + "\n".join(refused)


def _redis_acl_limit_state(url: str, queue: str) -> int:
    """As the server's admin: the least ACL need not grant what counting reads."""
    from redis_servers import acl_server

    from conveyor.brokers.redis.url import parse

    client = acl_server().client()
    try:
        return _redis_limit_state_with(client, parse(url).prefix, queue)
    finally:
        client.close()


BACKENDS["redis-acl"] = Backend(
    "redis-acl",
    _redis_acl_store,
    drop_store=_redis_acl_drop,
    write_worker=_redis_worker,
    limit_state=_redis_acl_limit_state,
)


# -- Redis Cluster: 3 primaries with a replica each, private to the test process --------------


def _redis_cluster_store(tmp_path: Path) -> str:
    """A fresh key prefix on the session's private cluster (see ``redis_servers``): each queue
    of a test lands in its own slot, spread over the three primaries."""
    from redis_servers import session_cluster

    port = session_cluster()[0].port
    return f"redis://127.0.0.1:{port}?cluster=1&prefix=ct-{os.urandom(5).hex()}"


def _redis_cluster_drop(url: str) -> None:
    from redis.cluster import RedisCluster

    from conveyor.brokers.redis.url import parse

    target = parse(url)
    client = RedisCluster.from_url(target.url)
    try:
        keys = list(
            client.scan_iter(match=f"{target.prefix}:*", count=1000, target_nodes=RedisCluster.PRIMARIES)
        )
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])  # split by slot by the client
    finally:
        client.close()


def _redis_cluster_limit_state(url: str, queue: str) -> int:
    from redis.cluster import RedisCluster

    from conveyor.brokers.redis.url import parse

    target = parse(url)
    client = RedisCluster.from_url(target.url)
    try:
        return _redis_limit_state_with(client, target.prefix, queue)
    finally:
        client.close()


BACKENDS["redis-cluster"] = Backend(
    "redis-cluster",
    _redis_cluster_store,
    drop_store=_redis_cluster_drop,
    write_worker=_redis_worker,
    limit_state=_redis_cluster_limit_state,
)
