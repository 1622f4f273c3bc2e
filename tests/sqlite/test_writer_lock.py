"""The writers' lock of a SQLite store: a holder that never lets go is an error after
``lock_timeout`` naming the lock file and its holder, not a wait without end."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.errors import ConfigurationError, StoreUnavailable
from conveyor.ids import new_id
from conveyor.records import Message


def _message() -> Message:
    return Message(id=new_id(), task="t", queue="q", priority=0, payload=b"[[],{}]")


def test_a_held_writer_lock_is_an_error_naming_the_file_and_its_holder(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/s.db?lock_timeout=0.5")
    lock = f"{tmp_path}/s.db-writer.lock"
    holder = os.open(lock, os.O_RDWR)  # another open file: a writer of another process, stuck
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            broker.enqueue([_message()])
        took = time.monotonic() - start
        assert 0.4 < took < 2.0, took
        text = str(caught.value)
        assert lock in text and f"pid {os.getpid()}" in text and "\n" not in text, text
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    # The abandoned wait let go of the lock it got late; the store works again.
    assert broker.enqueue([_message()])[0].created
    broker.close()


def test_a_writer_waits_for_a_lock_released_within_the_timeout(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/s.db?lock_timeout=5")
    holder = os.open(f"{tmp_path}/s.db-writer.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(0.3, fcntl.flock, (holder, fcntl.LOCK_UN)).start()
    try:
        start = time.monotonic()
        assert broker.enqueue([_message()])[0].created
        assert 0.25 < time.monotonic() - start < 2.0
    finally:
        os.close(holder)
        broker.close()


def test_lock_timeout_must_be_seconds(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteBroker(f"sqlite:///{tmp_path}/s.db?lock_timeout=soon")
