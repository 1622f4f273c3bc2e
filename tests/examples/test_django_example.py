"""examples/django: a Django shop (runserver) and a worker that loads Django, on one PostgreSQL database."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import psycopg
import pytest
from example_processes import EXAMPLES, POSTGRES_URL, free_port, serving
from waiting import wait_for

pytestmark = pytest.mark.slow
HERE = EXAMPLES / "django"


def test_orders_enqueued_in_the_views_transaction_or_on_commit_are_shipped(pg_schema, run) -> None:
    env = {
        "SHOP_SCHEMA": pg_schema,
        "CONVEYOR_URL": f"{POSTGRES_URL}?schema={pg_schema}",
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "PYTHONPATH": str(HERE),
    }
    import os

    migrated = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input"],
        cwd=HERE,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    run(HERE, env, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload")
    run(HERE, env, "-m", "conveyor", "worker", "shop.worker:app")
    wait_for(serving(base, "/orders/0"), what="the shop to serve")

    def shipped(order: int) -> dict[str, Any]:
        """The order's status once its job has succeeded (the task's ORM update commits on its
        own, just before the job's acknowledgement)."""

        def done() -> dict[str, Any] | None:
            status = httpx.get(f"{base}/orders/{order}", timeout=10).json()
            return status if status["job"] and status["job"]["state"] == "succeeded" else None

        status = wait_for(done, what=f"the worker to ship order {order}")
        assert status["status"] == "shipped"
        return status

    def counts() -> tuple[int, int]:
        with psycopg.connect(POSTGRES_URL) as conn:
            orders = conn.execute(f'SELECT count(*) FROM "{pg_schema}".shop_order').fetchone()
            jobs = conn.execute(f'SELECT count(*) FROM "{pg_schema}".jobs').fetchone()
        assert orders is not None and jobs is not None
        return orders[0], jobs[0]

    # connection=: the job is written by the view's transaction.
    placed = httpx.post(f"{base}/orders", json={"item": "book", "quantity": 2}, timeout=10)
    assert placed.status_code == 201, placed.text
    status = shipped(placed.json()["order"])
    assert status["job"] == {"id": placed.json()["job"], "state": "succeeded"}
    refused = httpx.post(f"{base}/orders", json={"item": "lamp", "quantity": 5}, timeout=10)
    assert refused.status_code == 409
    assert counts() == (1, 1)  # the refused order's job went with its rollback

    # transaction.on_commit: the job is enqueued after the commit.
    placed = httpx.post(f"{base}/orders/on-commit", json={"item": "book", "quantity": 1}, timeout=10)
    assert placed.status_code == 201, placed.text
    status = shipped(placed.json()["order"])
    assert status["job"]["state"] == "succeeded"
    refused = httpx.post(f"{base}/orders/on-commit", json={"item": "lamp", "quantity": 5}, timeout=10)
    assert refused.status_code == 409
    assert counts() == (2, 2)  # rolled back: on_commit never ran
