"""An acknowledgement that waits (an effect blocked on a row lock) holds back no heartbeat.

PostgreSQL: a task's effect updates a row the test holds locked for three times the lease,
while other long tasks of the same worker run. None of them loses its lease, and the blocked
acknowledgement lands once the test lets the row go.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from backend_stores import fresh_app
from waiting import wait_for

from contract.backends import BACKENDS
from conveyor import RetryPolicy, current_job
from conveyor.brokers.postgres.dsn import parse

LEASE = 1.0
LONG_TASKS = 3


def test_an_ack_blocked_on_a_row_lock_costs_no_other_task_its_lease(tmp_path: Path, run_worker: Any) -> None:
    sql = BACKENDS["postgres"].run_sql
    assert sql is not None
    runs: list[tuple[str, int]] = []
    lock = threading.Lock()
    me = f"books_slow_ack_{os.urandom(4).hex()}"  # picks this test's sessions out of the server's
    url = f"{BACKENDS['postgres'].new_store(tmp_path)}&application_name={me}"
    with fresh_app("postgres", tmp_path, url=url) as app:
        sql(app.url, "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL)", ())
        sql(app.url, "INSERT INTO t VALUES (1, 0)", ())
        once = RetryPolicy(max_attempts=3, base=0.01)

        @app.task(retry=once)
        def long(n: int) -> int:
            with lock:
                runs.append(("long", n))
            time.sleep(6 * LEASE)
            return n

        @app.task(retry=once)
        def bump() -> None:
            with lock:
                runs.append(("bump", 0))
            current_job().execute("UPDATE t SET n = n + 1 WHERE id = 1")

        holder = psycopg.connect(parse(app.url).conninfo)
        try:
            holder.execute("SELECT n FROM t WHERE id = 1 FOR UPDATE")  # held until commit
            config = {"concurrency": 4, "lease": LEASE, "heartbeat": 0.2, "reclaim_interval": 0.2}
            with run_worker(app, **config) as worker:
                longs = [long.enqueue(n) for n in range(LONG_TASKS)]
                wait_for(lambda: len(runs) == LONG_TASKS, what="the long tasks to start")
                blocked = bump.enqueue()

                def waiting_for_the_row() -> bool:
                    rows = sql(
                        app.url,
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND application_name = ? AND query LIKE 'UPDATE t SET n%%'",
                        (me,),
                    )
                    return rows[0][0] == 1

                wait_for(waiting_for_the_row, what="the acknowledgement to wait for the row")
                time.sleep(3 * LEASE)  # the ack waits this long: three leases
                assert blocked.status() == "running"
                holder.commit()
                assert blocked.result(timeout=30) is None
                assert [job.result(timeout=30) for job in longs] == list(range(LONG_TASKS))
                assert worker.counts["lost"] == 0
        finally:
            holder.close()
        assert sorted(runs) == [("bump", 0)] + [("long", n) for n in range(LONG_TASKS)], "a task ran twice"
        for job in [*longs, blocked]:
            info = job.info()
            assert (info.attempt, info.errors) == (1, []), info.errors
        assert sql(app.url, "SELECT n FROM t", ()) == [(1,)]
