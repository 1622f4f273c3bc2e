"""The writers' lock of a SQLite store: a flock on ``<path>-writer.lock``, waited for at most
``timeout`` seconds.

An uncontended lock is taken at once. A contended one is waited for by a helper thread on a
file of its own (a flock belongs to an open file, not to a thread), which wakes as soon as the
holder lets go; the caller gives up after the timeout, and a wait given up lets go of the lock
when it comes. The error names the lock file and, on Linux, the processes holding it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path

from conveyor.errors import StoreUnavailable


def acquire(fd: int, path: str, timeout: float, display: str) -> int:
    """Lock ``path`` exclusively, through ``fd`` if it is free; return the descriptor that holds
    it (``fd`` or one to close after :func:`release`)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        pass
    waiter = _Waiter(path)
    threading.Thread(target=waiter.wait, name="conveyor-writer-lock", daemon=True).start()
    if waiter.done.wait(timeout) or waiter.abandon():
        if waiter.error is not None:
            raise waiter.error
        return waiter.fd
    raise StoreUnavailable(
        f"store {display} unavailable: its writers' lock {path} was not free within lock_timeout={timeout:g} s;"
        f" held by {holders(path)}"
    )


def release(fd: int, own: int) -> None:
    """Let go of the lock taken by :func:`acquire` (``own``: the caller's descriptor)."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    if fd != own:
        os.close(fd)


class _Waiter:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.done = threading.Event()
        self.error: OSError | None = None
        self._lock = threading.Lock()
        self._abandoned = False

    def wait(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            self.error = exc
        with self._lock:
            if self._abandoned:
                os.close(self.fd)  # closing the file lets go of its lock
                return
            self.done.set()

    def abandon(self) -> bool:
        """Give up the wait; True if the lock came just now (then it is the caller's)."""
        with self._lock:
            if self.done.is_set():
                return True
            self._abandoned = True
            return False


def holders(path: str) -> str:
    """Who holds the flock on ``path``: pids and commands from /proc/locks, where there is one."""
    try:
        inode = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another process (see `fuser` or `lsof` on the file)"
    pids = []
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue  # a waiter, or another kind of lock
        if fields[5].rsplit(":", 1)[-1] == str(inode):
            pids.append(fields[4])
    if not pids:
        return "no process now (it was let go meanwhile)"
    return ", ".join(f"pid {pid} ({_command(pid)})" for pid in dict.fromkeys(pids))


def _command(pid: str) -> str:
    with contextlib.suppress(OSError):
        return (
            Path(f"/proc/{pid}/cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode(errors="replace")
            .strip()[:120]
        )
    return "?"
