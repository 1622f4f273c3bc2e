"""A FastAPI shop that enqueues in the request's transaction: ``uvicorn shop:api``."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from tasks import DATABASE_URL, app, ship

SCHEMA = (Path(__file__).parent / "schema.sql").read_text()


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    with psycopg.connect(DATABASE_URL) as conn:
        conn.execute(SCHEMA)
    yield
    app.close()


api = FastAPI(lifespan=lifespan)


class NewOrder(BaseModel):
    item: str
    quantity: int


@api.post("/orders", status_code=201)
def create_order(order: NewOrder) -> dict[str, object]:
    # One transaction for the order, its stock and its job: all of them or none.
    with psycopg.connect(DATABASE_URL) as conn, conn.transaction():
        (order_id,) = conn.execute(
            "INSERT INTO orders (item, quantity) VALUES (%s, %s) RETURNING id", (order.item, order.quantity)
        ).fetchone()
        job = ship.enqueue(order_id, connection=conn)  # written by this transaction
        conn.execute("UPDATE orders SET job_id = %s WHERE id = %s", (job.id, order_id))
        taken = conn.execute(
            "UPDATE stock SET available = available - %s WHERE item = %s AND available >= %s",
            (order.quantity, order.item, order.quantity),
        ).rowcount
        if not taken:  # rolls back the order and its job: no worker ever sees it
            raise HTTPException(409, f"not enough {order.item} in stock")
    return {"order": order_id, "job": job.id}


@api.get("/orders/{order_id}")
def order_status(order_id: int) -> dict[str, object]:
    with psycopg.connect(DATABASE_URL) as conn:
        row = conn.execute("SELECT status, job_id FROM orders WHERE id = %s", (order_id,)).fetchone()
    if row is None:
        raise HTTPException(404, "no such order")
    status, job_id = row
    return {"order": order_id, "status": status, "job": {"id": job_id, "state": app.job(job_id).status()}}
