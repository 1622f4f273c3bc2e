"""The stores end-to-end tests run against: a fresh, isolated store per test, with a ledger the
tasks write through their transactional effects and the test reads back."""

from __future__ import annotations

import abc
import os
import sqlite3
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS", "redis://127.0.0.1:6379/10")
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


class Store(abc.ABC):
    """One backend's fresh store: its URL, and how the e2e tasks' ledger is kept there."""

    name = ""
    #: Environment for worker processes: how ``e2e_app.record`` writes its ledger row.
    ledger_env: dict[str, str]
    url: str

    @abc.abstractmethod
    def ledger(self) -> list[int]:
        """The ledger rows the tasks wrote, one per successful effect."""

    def close(self) -> None:  # noqa: B027 - a store in the test's tmp_path has nothing to remove
        """Remove everything the test stored."""


class SQLiteStore(Store):
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "e2e.db"
        self.url = f"sqlite:///{self.path}"
        self.ledger_env = {"E2E_LEDGER": "sql", "E2E_LEDGER_SQL": "INSERT INTO ledger (n) VALUES (?)"}
        with sqlite3.connect(self.path) as conn:
            conn.execute("CREATE TABLE ledger (n INTEGER)")

    def ledger(self) -> list[int]:
        with sqlite3.connect(self.path) as conn:
            return [n for (n,) in conn.execute("SELECT n FROM ledger")]


class RedisStore(Store):
    """A fresh key prefix per test, its keys deleted at the end (the database is shared)."""

    name = "redis"

    def __init__(self, tmp_path: Path, server_url: str = REDIS_URL) -> None:
        from redis.client import Redis

        self.prefix = f"e2e-{os.urandom(5).hex()}"
        self.url = f"{server_url}{'&' if '?' in server_url else '?'}prefix={self.prefix}"
        self.client = Redis.from_url(server_url)
        #: In the queue's hash slot, so the effect runs inside the ack script.
        self.ledger_key = f"{self.prefix}:{{default}}:e2e-ledger"
        self.ledger_env = {"E2E_LEDGER": "redis", "E2E_LEDGER_KEY": self.ledger_key}

    def ledger(self) -> list[int]:
        return [int(n) for n in self.client.lrange(self.ledger_key, 0, -1)]

    def close(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            self.client.unlink(*keys[start : start + 500])
        self.client.close()


class PostgresStore(Store):
    name = "postgres"

    def __init__(self, tmp_path: Path) -> None:
        self.schema = f"conveyor_e2e_{os.urandom(4).hex()}"
        self.url = f"{POSTGRES_URL}?schema={self.schema}"
        self._sql(f"CREATE SCHEMA {self.schema}")
        self._sql(f"CREATE TABLE {self.schema}.ledger (n INTEGER)")
        self.ledger_env = {
            "E2E_LEDGER": "sql",
            "E2E_LEDGER_SQL": f"INSERT INTO {self.schema}.ledger (n) VALUES (%s)",
        }

    def _sql(self, statement: str) -> list[Any]:
        """A connection per statement: tests restart the server under a store."""
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def ledger(self) -> list[int]:
        return [n for (n,) in self._sql(f"SELECT n FROM {self.schema}.ledger")]

    def close(self) -> None:
        self._sql(f"DROP SCHEMA {self.schema} CASCADE")


#: Every backend the end-to-end tests run on. A backend whose client library is missing fails
#: its tests (ImportError when its store is made) instead of silently dropping out of the run.
STORES: dict[str, Any] = {"sqlite": SQLiteStore, "postgres": PostgresStore, "redis": RedisStore}
