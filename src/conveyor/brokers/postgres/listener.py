"""The LISTEN side of wake-ups: one dedicated autocommit connection per waiting thread."""

from __future__ import annotations

import contextlib
import selectors
import threading
import time
from collections.abc import Collection
from typing import Any

import psycopg
from psycopg import sql

from conveyor.brokers.postgres.dsn import Target


class Listener:
    """A connection LISTENing on a schema's wake-up channel.

    Notifications queue up in the connection's socket between waits, so a wake-up sent after the
    waiting thread last looked (say, while it was reserving) ends its next wait at once.
    """

    def __init__(self, target: Target, interrupt: int) -> None:
        self.conn: psycopg.Connection[Any] = psycopg.connect(target.conninfo, autocommit=True)
        try:
            self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(target.channel)))
        except BaseException:
            self.conn.close()
            raise
        self._interrupt = interrupt
        #: Held while a thread waits; ``close`` takes it after interrupting the wait.
        self.lock = threading.Lock()

    @property
    def broken(self) -> bool:
        return self.conn.closed or self.conn.broken

    def wait(self, queues: Collection[str], timeout: float) -> bool:
        """Block until a wake-up for one of ``queues``, the interrupt or ``timeout``; True if woken.

        Wake-ups for other queues are consumed and ignored. Raises psycopg.OperationalError if
        the connection broke (the server restarted or ended it).
        """
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.conn.fileno(), selectors.EVENT_READ, "conn")
            selector.register(self._interrupt, selectors.EVENT_READ, "interrupt")
            while True:
                if self._drain(queues):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if remaining <= 0.002:
                    # epoll counts whole milliseconds, rounding up; sleep is exact.
                    time.sleep(remaining)
                    return self._drain(queues)
                events = selector.select(remaining - 0.001)
                if any(key.data == "interrupt" for key, _ in events):
                    return False
                if events:
                    self.conn.pgconn.consume_input()
                    if self.conn.pgconn.status != psycopg.pq.ConnStatus.OK:
                        raise psycopg.OperationalError("the wake-up connection was closed by the server")

    def _drain(self, queues: Collection[str]) -> bool:
        """Consume the notifications read so far; True if one was for ``queues``."""
        woken = False
        while (note := self.conn.pgconn.notifies()) is not None:
            woken = woken or note.extra.decode() in queues
        return woken

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
