"""The claim stays an index range scan however many finished jobs the table holds."""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conveyor.brokers.postgres import PostgresBroker, migrate, queries
from conveyor.brokers.postgres.dsn import parse
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message

FINISHED = 1_000_000
BASE_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def explain(admin: Any, statement: str, params: dict[str, Any], generic: bool) -> str:
    """The plan of ``statement``: planned for these values, or the generic plan PostgreSQL may
    cache for it once psycopg prepares it (after a few executions)."""
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", statement)))
    prepared = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m[1]) + 1}", statement)
    admin.execute(f"SET plan_cache_mode = {'force_generic_plan' if generic else 'force_custom_plan'}")
    admin.execute(f"PREPARE probe AS {prepared}")
    try:
        cur = psycopg.ClientCursor(admin)  # the values go into EXECUTE's text
        placeholders = ", ".join(["%s"] * len(names))
        return "\n".join(
            row[0]
            for row in cur.execute(f"EXPLAIN EXECUTE probe({placeholders})", [params[n] for n in names])
        )
    finally:
        admin.execute("DEALLOCATE probe")


@pytest.fixture(scope="module")
def big_store() -> Iterator[str]:
    """A store with a million finished jobs in queue q and 3,000 ready ones over three levels;
    built once for the module (the latency test claims some of the ready ones)."""
    schema = f"conveyor_test_{os.urandom(5).hex()}"
    url = f"{BASE_URL}?schema={schema}"
    migrate(url)
    jobs = f'"{schema}".jobs'
    with psycopg.connect(BASE_URL, autocommit=True) as conn:
        try:
            conn.execute(
                f"INSERT INTO {jobs} (id, task, queue, priority, state, payload, run_at, enqueued_at, attempt,"
                " max_attempts, finished_at, expires_at)"
                " SELECT 'done-' || i, 't', 'q', i %% 3, 'succeeded', '\\x00'::bytea, i, i, 1, 3, i, 1e12"
                " FROM generate_series(1, %s) AS i",
                [FINISHED],
            )
            broker = PostgresBroker(url)
            try:
                for level in range(3):
                    ready = [
                        Message(id=new_id(), task="t", queue="q", priority=level, payload=b"[[],{}]")
                        for _ in range(1000)
                    ]
                    broker.enqueue(ready)
            finally:
                broker.close()
            conn.execute(f"ANALYZE {jobs}")
            yield url
        finally:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
def test_the_claim_and_its_candidates_use_the_claim_index(admin, big_store, generic):
    statements = queries.load(parse(big_store).ident)
    claim = {"queues": ["q"], "priorities": [1], "counts": [10], "lease": 30.0, "worker": "w", "now": None}
    counts = {"queues": ["q"] * 3, "priorities": [0, 1, 2], "limit": 10, "now": None}

    plans = [
        explain(admin, statements["claim"], claim, generic),
        explain(admin, statements["candidates"], counts, generic),
        explain(admin, statements["count_ready"], counts, generic),
        explain(admin, statements["next_due"], {"queues": ["q"]}, generic),
    ]

    for plan in plans:
        assert "jobs_claim" in plan, plan
        assert "Seq Scan" not in plan, plan
        assert "JIT" not in plan, plan  # estimates low enough never to compile


def test_claim_latency_with_a_million_finished_jobs(big_store, record_property):
    broker = PostgresBroker(big_store)
    fairness = Fairness((6, 3, 1))
    took: list[float] = []
    try:
        broker.stats(["nothing"])  # open the pool outside the measurement
        for _ in range(100):
            start = time.perf_counter()
            got = broker.reserve(["q"], 10, 30.0, "w", fairness)
            took.append(time.perf_counter() - start)
            assert len(got) == 10
    finally:
        broker.close()

    median_ms = statistics.median(took) * 1000
    record_property("claim_median_ms", median_ms)
    print(f"\nreserve of 10 with {FINISHED} finished jobs: median {median_ms:.2f} ms over 100")
