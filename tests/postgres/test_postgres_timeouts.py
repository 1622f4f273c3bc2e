"""Bounded waits of Conveyor's PostgreSQL sessions: a reply that never comes (the client cuts
the connection after command_timeout), and a session left idle in a transaction (the server
ends it after idle_in_transaction_session_timeout, releasing its locks)."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest
from fault_proxy import fault_proxy

from conveyor.brokers.postgres import PostgresBroker
from conveyor.brokers.postgres.dsn import parse
from conveyor.errors import StoreUnavailable


def test_a_reply_that_never_comes_ends_after_command_timeout(new_store: Callable[..., str]) -> None:
    with fault_proxy("127.0.0.1", 5432) as proxy:
        url = new_store(command_timeout="1").replace("127.0.0.1:5432", proxy.url_netloc())
        broker = PostgresBroker(url)
        try:
            assert broker.stats(["q"])[0].queue == "q"  # connected, migrated, pooled
            proxy.mode = "blackhole"
            start = time.monotonic()
            with pytest.raises(StoreUnavailable, match="command_timeout=1"):
                broker.stats(["q"])
            assert 0.9 < time.monotonic() - start < 2.5
            proxy.heal()
            assert broker.stats(["q"])[0].queue == "q"  # a new connection
        finally:
            broker.close()


def test_the_server_ends_a_session_idle_in_a_transaction(new_store: Callable[..., str]) -> None:
    target = parse(new_store(idle_in_transaction_session_timeout="500ms"))
    with psycopg.connect(target.conninfo) as conn:
        conn.execute("SELECT 1")  # a transaction begins, then nothing more is sent
        time.sleep(1.0)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            conn.execute("SELECT 1")
