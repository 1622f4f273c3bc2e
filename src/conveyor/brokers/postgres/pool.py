"""Conveyor's own small connection pool: connects on demand, fails with the real cause.

A caller that needs a connection takes an idle one that still works, or connects (bounded by
libpq's ``connect_timeout``) if fewer than ``max_size`` are open, or waits for one to come
back. A failed connect raises its own error at once, so a producer on a down store hears why
within the connect timeout. Every connection in use is watched: one busy longer than
``command_timeout`` (a reply that never comes: libpq has no read timeout) has its socket shut
down, which ends the call with an error the caller can retry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

Connection = psycopg.Connection[tuple[Any, ...]]
log = logging.getLogger("conveyor.store")


class CommandTimeout(psycopg.OperationalError):
    """No reply within ``command_timeout``: the client cut the connection."""


class Pool:
    def __init__(self, conninfo: str, max_size: int, wait: float, command_timeout: float) -> None:
        self._conninfo = conninfo
        self._max_size = max_size
        self._wait = wait
        self._command_timeout = command_timeout
        self._idle: list[Connection] = []
        self._size = 0  # open connections, idle or in use, or being opened
        self._busy: dict[int, tuple[float, Connection]] = {}  # id -> (deadline, connection)
        self._cut: set[int] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._watchdog: threading.Thread | None = None

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """An autocommit connection; a transaction left open is rolled back when it returns."""
        conn = self._get()
        try:
            with self.watched(conn):
                yield conn
        finally:
            self._put(conn)

    @contextlib.contextmanager
    def watched(self, conn: Connection) -> Iterator[None]:
        """Cut ``conn`` if the block runs longer than ``command_timeout`` (any connection of
        this pool's database, pooled or not); the block then raises CommandTimeout."""
        key = id(conn)
        if self._command_timeout > 0:
            with self._cond:
                self._busy[key] = (time.monotonic() + self._command_timeout, conn)
                if self._watchdog is None:
                    self._watchdog = threading.Thread(
                        target=self._watch, name="conveyor-pg-watchdog", daemon=True
                    )
                    self._watchdog.start()
        try:
            yield
        except psycopg.OperationalError as exc:
            if key in self._cut:
                raise CommandTimeout(
                    f"no reply within command_timeout={self._command_timeout:g} s; connection cut"
                ) from exc
            raise
        finally:
            with self._cond:
                self._busy.pop(key, None)
                self._cut.discard(key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for conn in idle:
            conn.close()

    def _get(self) -> Connection:
        deadline = time.monotonic() + self._wait
        while True:
            with self._cond:
                if self._closed:
                    raise psycopg.OperationalError("the pool is closed")
                if self._idle:
                    conn: Connection | None = self._idle.pop()
                elif self._size < self._max_size:
                    self._size += 1
                    break
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise psycopg.OperationalError(
                            f"all {self._max_size} connections stayed busy for {self._wait:g} s"
                        )
                    self._cond.wait(remaining)
                    conn = None
            if conn is not None:
                if alive(conn):
                    return conn
                log.warning("discarding a connection the server closed while it was idle (a restart?)")
                conn.close()
                with self._cond:
                    self._size -= 1
        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise

    def _put(self, conn: Connection) -> None:
        if not (conn.closed or conn.broken):
            status = conn.info.transaction_status
            if status in (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR):
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
            elif status != psycopg.pq.TransactionStatus.IDLE:
                conn.close()  # a query still running: no way to reuse it
        with self._cond:
            if conn.closed or conn.broken or self._closed:
                conn.close()
                self._size -= 1
            else:
                self._idle.append(conn)
            self._cond.notify()

    def _watch(self) -> None:
        """Cut the connections busy past their deadline; end once none is busy (the next busy
        one starts another), so an idle process has no thread inside the broker."""
        tick = min(1.0, self._command_timeout / 4)
        with self._cond:
            while not self._closed:
                self._cond.wait(tick)
                now = time.monotonic()
                for key, (deadline, conn) in list(self._busy.items()):
                    if now >= deadline and key not in self._cut:
                        self._cut.add(key)
                        _shut(conn)
                if not self._busy:
                    break
            self._watchdog = None


def _shut(conn: Connection) -> None:
    """Shut the connection's socket down: the call blocked on it reads end-of-file at once."""
    with contextlib.suppress(OSError, psycopg.Error):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def alive(conn: Connection) -> bool:
    """Whether an idle connection still works. The server sends an idle session nothing unless
    it is ending it, so only a readable socket costs a round trip to find out."""
    if conn.closed or conn.broken:
        return False
    if not _readable(conn.fileno()):
        return True
    try:
        conn.execute("")  # reads what the server sent: an error if it ended the session
    except psycopg.OperationalError:
        return False
    return True


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])
