"""examples/fastapi: a FastAPI shop (uvicorn) and a worker beside it, on one PostgreSQL database."""

from __future__ import annotations

import httpx
import pytest
from example_processes import EXAMPLES, POSTGRES_URL, free_port, serving
from waiting import wait_for

pytestmark = pytest.mark.slow


def test_an_order_is_enqueued_in_its_transaction_and_shipped_by_the_worker(pg_schema, run) -> None:
    search_path = f"options=-csearch_path%3D{pg_schema}"
    env = {
        "DATABASE_URL": f"{POSTGRES_URL}?{search_path}",
        "CONVEYOR_URL": f"{POSTGRES_URL}?schema={pg_schema}&{search_path}",
        "PYTHONPATH": str(EXAMPLES / "fastapi"),
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    run(EXAMPLES / "fastapi", env, "-m", "uvicorn", "shop:api", "--port", str(port))
    run(EXAMPLES / "fastapi", env, "-m", "conveyor", "worker", "tasks:app")
    wait_for(serving(base, "/orders/0"), what="the shop to serve")

    placed = httpx.post(f"{base}/orders", json={"item": "book", "quantity": 2}, timeout=10)
    assert placed.status_code == 201, placed.text
    order = placed.json()["order"]

    shipped = wait_for(
        lambda: (s := httpx.get(f"{base}/orders/{order}", timeout=10).json())["status"] == "shipped" and s,
        what="the worker to ship the order",
    )
    assert shipped["job"] == {"id": placed.json()["job"], "state": "succeeded"}

    # Out of stock: the handler fails after its enqueue, and the job goes with the order.
    refused = httpx.post(f"{base}/orders", json={"item": "lamp", "quantity": 5}, timeout=10)
    assert refused.status_code == 409
    import psycopg

    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (1,)
        assert conn.execute(f'SELECT count(*) FROM "{pg_schema}".jobs').fetchone() == (1,)
