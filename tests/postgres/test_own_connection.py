"""A thread given a connection of its own (a worker's heartbeats) never waits for the pool."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from conveyor.brokers.postgres import PostgresBroker, migrate
from conveyor.brokers.postgres.dsn import parse
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message


def test_heartbeats_on_their_own_connection_pass_a_pool_that_other_threads_hold(new_store: Any) -> None:
    url = new_store(application_name="conveyor_own_connection")
    migrate(url)
    broker = PostgresBroker(url, max_connections=1)
    blocker = psycopg.connect(parse(url).conninfo.replace("conveyor_own_connection", "blocker"))
    try:
        broker.enqueue([Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[[],{}]")])
        (d,) = broker.reserve(["q"], 1, 30, "w", Fairness((6, 3, 1)))
        schema = parse(url).schema
        blocker.execute(f'SELECT 1 FROM "{schema}".jobs WHERE id = %s FOR UPDATE', [d.id])
        # The pool's only connection now waits on the server for the row lock.
        holder = threading.Thread(target=broker.release, args=([(d.id, d.token)],))
        holder.start()
        time.sleep(0.3)
        answers: list[list[str]] = []

        def heartbeat() -> None:
            broker.own_connection()
            answers.append(broker.extend([(d.id, d.token)], 60))

        beat = threading.Thread(target=heartbeat)
        start = time.monotonic()
        beat.start()
        beat.join(8)
        took = time.monotonic() - start
        blocker.rollback()
        holder.join(10)
        assert answers == [[]] and took < 2, f"the heartbeat waited {took:.1f} s for the pool"
    finally:
        blocker.close()
        broker.close()
