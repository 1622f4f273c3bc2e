"""The grants documented for a worker role are enough for every operation, and no more is asked."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import conveyor.brokers.postgres
from conveyor.brokers.postgres import PostgresBroker, migrate
from conveyor.brokers.postgres.dsn import parse
from conveyor.brokers.postgres.migrate import migrations
from conveyor.errors import ConfigurationError
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome, Rule, WorkerInfo


def documented_grants(schema: str, role: str) -> list[str]:
    """The worker role's GRANT statements from the package docstring, for this schema and role."""
    doc = conveyor.brokers.postgres.__doc__ or ""
    grants = [line.strip() for line in doc.splitlines() if line.strip().startswith("GRANT")]
    worker = [g for g in grants if g.endswith("TO conveyor_worker;")]
    assert worker, doc
    return [
        re.sub(r"\bconveyor\.", f'"{schema}".', g)
        .replace("SCHEMA conveyor ", f'SCHEMA "{schema}" ')
        .replace("conveyor_worker", role)
        for g in worker
    ]


@pytest.fixture
def role(admin: Any) -> Iterator[str]:
    name = f"conveyor_worker_{os.urandom(4).hex()}"
    admin.execute(f"CREATE ROLE {name} LOGIN")
    yield name
    admin.execute(f"DROP OWNED BY {name}")
    admin.execute(f"DROP ROLE {name}")


def as_role(url: str, role: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)


def test_a_worker_role_with_the_documented_grants_runs_every_operation(admin, store_url, role):
    migrate(store_url)
    for grant in documented_grants(parse(store_url).schema, role):
        admin.execute(grant)
    broker = PostgresBroker(as_role(store_url, role))
    fairness = Fairness((6, 3, 1))
    try:
        a, b, c, d = (Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[]") for _ in range(4))
        broker.enqueue([a, b, c, d])
        ra, rb, rc = broker.reserve(["q"], 3, 30, "w", fairness)
        assert broker.extend([(ra.id, ra.token)], 30) == []
        statuses = broker.ack(
            [Outcome(ra.id, ra.token, "succeeded"), Outcome(rb.id, rb.token, "retry", error={"type": "E"})]
        )
        assert [s.status for s in statuses] == ["ok", "ok"]
        assert broker.ack([Outcome(rc.id, rc.token, "dead", error={"type": "E"})])[0].status == "ok"
        assert broker.replay([rc.id]) == 1
        assert broker.cancel(d.id)
        (again,) = broker.reserve(["q"], 1, 30, "w", fairness)
        assert broker.release([(again.id, again.token)]) == 1
        broker.reclaim()
        broker.pause("q")
        assert broker.reserve(["q"], 1, 30, "w", fairness) == []
        assert [(p.queue, p.task) for p in broker.paused()] == [("q", None)]
        broker.resume("q")
        broker.expire()
        broker.purge([])
        assert broker.get(a.id) is not None
        assert broker.stats(["q"])[0].total("succeeded") == 1
        assert broker.jobs(queue="q")
        info = WorkerInfo(
            id="w",
            host="h",
            pid=1,
            queues=["q"],
            concurrency=1,
            in_flight=0,
            started_at=0,
            last_beat=time.time(),
            counts={},
        )
        broker.beat(info, 10)
        assert [w.id for w in broker.workers()] == ["w"]
        woken = threading.Timer(
            0.2,
            lambda: broker.enqueue([Message(id=new_id(), task="t", queue="q", priority=0, payload=b"[]")]),
        )
        broker.wait(["q"], 0.01)
        woken.start()
        start = time.monotonic()
        broker.wait(["q"], 5)
        woken.join()
        assert time.monotonic() - start < 1
        # Limits: their tables and functions are covered by the grants too.
        broker.set_limit("lim", Rule(key="", concurrency=5))
        limited = [
            Message(
                id=new_id(), task="t", queue="lim", priority=1, payload=b"[]", limits=(Rule("k", 10.0, 2, 1),)
            )
            for _ in range(3)
        ]
        broker.enqueue(limited)
        (first,) = broker.reserve(["lim"], 3, 30, "w", fairness)
        assert broker.reserve(["lim"], 3, 30, "w", fairness) == []  # k's one slot is held
        assert (
            broker.ack([Outcome(first.id, first.token, "throttled", delay=0.01, error={"type": "E"})])[
                0
            ].status
            == "ok"
        )
        assert {i.key for i in broker.limits("lim")} == {"", "k"}
        assert broker.clear_limit("lim", "")
    finally:
        broker.close()


def test_a_role_that_may_not_migrate_is_told_to_run_migrate(store_url, role):
    broker = PostgresBroker(as_role(store_url, role))
    try:
        with pytest.raises(ConfigurationError, match="conveyor migrate"):
            broker.stats(["q"])
    finally:
        broker.close()


#: The worker role's grants as documented before migration 5 (which added the pauses table).
GRANTS_BEFORE_PAUSES = [
    'GRANT USAGE ON SCHEMA "{schema}" TO {role}',
    'GRANT SELECT ON "{schema}".conveyor_migrations TO {role}',
    'GRANT SELECT, INSERT, UPDATE, DELETE ON "{schema}".jobs, "{schema}".workers TO {role}',
    'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA "{schema}" TO {role}',
]


def test_an_upgrade_to_pauses_keeps_a_worker_role_granted_as_before_working(admin, store_url, role):
    target = parse(store_url)
    with psycopg.connect(target.conninfo, autocommit=True) as conn, conn.transaction():
        conn.execute(f'CREATE SCHEMA "{target.schema}"')
        conn.execute(
            f'CREATE TABLE "{target.schema}".conveyor_migrations (version integer PRIMARY KEY,'
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in [m for m in migrations() if m.version < 5]:
            conn.execute(m.sql.replace("{schema}", target.ident).encode())
            conn.execute(
                f'INSERT INTO "{target.schema}".conveyor_migrations VALUES (%s, %s)', [m.version, m.name]
            )
    for grant in GRANTS_BEFORE_PAUSES:
        admin.execute(grant.format(schema=target.schema, role=role))
    assert 5 in migrate(store_url)

    broker = PostgresBroker(as_role(store_url, role))
    try:
        m = Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[]")
        broker.enqueue([m])
        broker.pause("q", task="t")
        assert broker.reserve(["q"], 1, 30, "w", Fairness((6, 3, 1))) == []
        assert [(p.queue, p.task) for p in broker.paused()] == [("q", "t")]
        broker.resume("q", task="t")
        assert [d.id for d in broker.reserve(["q"], 1, 30, "w", Fairness((6, 3, 1)))] == [m.id]
    finally:
        broker.close()
