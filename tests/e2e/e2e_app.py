"""The application the end-to-end tests run in real worker processes."""

from __future__ import annotations

import os
import time

from conveyor import Conveyor, RetryPolicy, current_job

app = Conveyor()  # CONVEYOR_URL, set by the test


def _log_execution(n: int) -> None:
    """One line per execution (not per task), appended atomically."""
    path = os.environ.get("E2E_EXEC_LOG")
    if path:
        ctx = current_job()
        line = f"{n} {ctx.token} {os.getpid()}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


@app.task(retry=RetryPolicy(max_attempts=10, base=0.01, max_delay=0.1))
def record(n: int, seconds: float = 0.0) -> int:
    """Sleep, then write ledger row ``n`` atomically with the acknowledgement."""
    _log_execution(n)
    if seconds:
        time.sleep(seconds)
    _ledger_effect(n)
    return n


def _ledger_effect(n: int) -> None:
    """Write ledger row ``n`` atomically with the acknowledgement, in the store's own terms."""
    if os.environ["E2E_LEDGER"] == "redis":
        current_job().execute("RPUSH", (os.environ["E2E_LEDGER_KEY"], n))
    else:
        current_job().execute(os.environ["E2E_LEDGER_SQL"], (n,))


@app.task(retry=RetryPolicy(max_attempts=3, base=0.01))
def poison(how: str = "exit") -> None:
    """Kills its worker process every time: ``exit`` (os._exit) or ``segfault`` (a NULL read)."""
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    os._exit(3)


@app.task(retry=RetryPolicy(max_attempts=3, base=0.01))
def hog() -> None:
    """Raises MemoryError every time, as an allocation too large for the host would."""
    raise MemoryError("cannot allocate 64 GiB")


@app.task
def ok() -> str:
    return "ok"


@app.task(retry=RetryPolicy(max_attempts=2, base=0.01))
def fail(message: str) -> None:
    raise RuntimeError(message)


@app.periodic(every=0.5, name="heartbeat_tick", queue="ticks")
def heartbeat_tick() -> None:
    """Records which tick ran, and where."""
    key = current_job().key or ""
    current_job().execute("INSERT INTO ticks (tick, worker_pid) VALUES (?, ?)", (key, os.getpid()))


@app.task(retry=RetryPolicy(max_attempts=2, base=0.01))
def login(user: str, password: str) -> None:
    """Fails repeating its secret argument, as careless error messages do."""
    raise PermissionError(f"login refused for {user} with password {password}")
