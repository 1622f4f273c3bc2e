"""The application the end-to-end tests run in real worker processes."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import decimal
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import conveyor.brokers
from conveyor import Conveyor, Limit, RateLimited, RetryPolicy, current_job

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


@app.task(retry=RetryPolicy(max_attempts=10, base=0.01, max_delay=0.1))
def record_or_fail_first(n: int, seconds: float) -> int:
    """As ``record``, but the first attempt raises after its sleep: its outcome is a retry."""
    _log_execution(n)
    time.sleep(seconds)
    if current_job().attempt == 1:
        raise RuntimeError(f"first attempt of {n} fails")
    _ledger_effect(n)
    return n


@app.task(retry=RetryPolicy(max_attempts=3, base=0.01))
def gil_hog(n: int, fifo: str) -> int:
    """On its first attempt, blocks in a C call that keeps the GIL until the test writes a byte
    to ``fifo``: every other thread of the worker process, heartbeats included, stands still
    meanwhile. Later attempts run at once. Writes ledger row ``n`` with the acknowledgement."""
    _log_execution(n)
    if current_job().attempt == 1:
        _read_holding_the_gil(fifo)
    _ledger_effect(n)
    return n


def _read_holding_the_gil(fifo: str) -> None:
    """``read(2)`` one byte from ``fifo`` through ``ctypes.PyDLL``, whose calls keep the GIL
    (``CDLL`` releases it), as a C extension that never releases it would."""
    fd = os.open(fifo, os.O_RDWR)  # read-write: opening a FIFO does not wait for a writer
    try:
        libc = ctypes.PyDLL(None)
        libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        byte = ctypes.create_string_buffer(1)
        with _no_other_thread_in_a_store_call():
            libc.read(fd, byte, 1)
    finally:
        os.close(fd)


_BROKERS = str(Path(conveyor.brokers.__file__).parent) + os.sep


#: Broker calls that only wait for a wake-up (a datagram, a NOTIFY, a PUBLISH) and hold no
#: lock of the store: a thread blocked in one may be frozen with the process.
_WAITS = frozenset({"wait", "wait_cancel"})


def _in_a_store_call() -> bool:
    """Whether a thread of this process other than the caller is inside the broker's code (other
    than waiting for a wake-up)."""
    me = threading.get_ident()
    for ident, frame in sys._current_frames().items():
        f: FrameType | None = frame
        inside = False
        while ident != me and f is not None:
            if f.f_code.co_filename.startswith(_BROKERS):
                # (not SQLite's writer lock's wait: a flock taken in it would freeze every writer)
                if f.f_code.co_name in _WAITS and not f.f_code.co_filename.endswith("sqlite_lock.py"):
                    inside = False
                    break
                inside = True
            f = f.f_back
        if inside:
            return True
    return False


@contextlib.contextmanager
def _no_other_thread_in_a_store_call(patience: float = 10.0) -> Iterator[None]:
    """Enter the block when no other thread of this process is inside a store call, and keep
    the GIL until the block first releases it.

    A process frozen inside a store transaction would freeze that transaction's locks with it
    (SQLite's write lock: every writer of the store would wait for it), which is not what the
    tests that freeze a worker are about. A forced GIL switch (every ``sys.getswitchinterval``)
    could let another thread start a store call between the check and the block; switching is
    made so rare that it cannot, and the pause lets every thread already waiting for the GIL
    wait again under the new interval.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        time.sleep(0.01)
        give_up = time.monotonic() + patience
        while _in_a_store_call():
            if time.monotonic() > give_up:
                raise RuntimeError(f"a store call was still running after {patience} s")
            time.sleep(0.001)
        yield
    finally:
        sys.setswitchinterval(previous)


def _pause(signum: int, frame: FrameType | None) -> None:
    """SIGUSR1: SIGSTOP this process, outside any store call (see above), until SIGCONT."""
    with _no_other_thread_in_a_store_call():
        os.kill(os.getpid(), signal.SIGSTOP)


if os.environ.get("E2E_PAUSABLE"):
    signal.signal(signal.SIGUSR1, _pause)


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


@app.task
def nap(seconds: float) -> None:
    """Hold a worker slot for ``seconds``: a backlog that takes a while to drain."""
    time.sleep(seconds)


@app.task(retry=RetryPolicy(max_attempts=2, base=0.01))
def fail(message: str) -> None:
    raise RuntimeError(message)


@app.periodic(every=0.5, name="heartbeat_tick", queue="ticks")
def heartbeat_tick() -> None:
    """Records which tick ran, and where."""
    key = current_job().key or ""
    current_job().execute("INSERT INTO ticks (tick, worker_pid) VALUES (?, ?)", (key, os.getpid()))


def _log_tick() -> None:
    """One line per run of a periodic tick: its key, token and process, appended atomically."""
    path = os.environ.get("E2E_EXEC_LOG")
    if path:
        ctx = current_job()
        line = f"{ctx.key} {ctx.token} {os.getpid()}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


@app.periodic(every=1.0, name="second_skip", queue="seconds")
def second_skip() -> None:
    """Every second; ticks missed while no worker ran are skipped (the default)."""
    _log_tick()


@app.periodic(every=1.0, name="second_once", queue="seconds_once", catch_up="once")
def second_once() -> None:
    """Every second; after a gap, the latest missed tick runs once."""
    _log_tick()


@app.task(retry=RetryPolicy(max_attempts=2, base=0.01))
def login(user: str, password: str) -> None:
    """Fails repeating its secret argument, as careless error messages do."""
    raise PermissionError(f"login refused for {user} with password {password}")


# -- limits (tests/e2e/test_limits_e2e.py) --------------------------------------------------------


def _spans(line: str) -> None:
    """Append one line to $E2E_SPANS atomically."""
    fd = os.open(os.environ["E2E_SPANS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(queue="rated", limits=[Limit(rate="200/s", burst=20)])
def rated(n: int) -> int:
    return n


@app.task(queue="slots", limits=[Limit(key="acct:{account}", concurrency=2)])
def per_account(account: str, seconds: float) -> None:
    """Record this execution's start and end on the store's clock: ``account start end``."""
    start = app.broker.time()
    time.sleep(seconds)
    _spans(f"{account} {start!r} {app.broker.time()!r}\n")


@app.task(queue="throttled", limits=[Limit(key="api:{service}", rate="1000/s")], max_throttles=3)
def call_api(service: str, n: int, throttle: str) -> int:
    """Raise RateLimited once per job (``throttle`` "once") or on every execution ("always")."""
    marker = Path(os.environ["E2E_SPANS"]).with_name(f"throttled-{service}-{n}")
    if throttle == "always" or not marker.exists():
        marker.touch()
        _spans(f"{service} {n} {app.broker.time()!r}\n")
        raise RateLimited(retry_after=0.3)
    return n


@app.task(queue="tenants", limits=[Limit(key="tenant:{tenant}", concurrency=10_000)])
def tenant_job(tenant: str, seconds: float = 0.002) -> None:
    time.sleep(seconds)


@dataclasses.dataclass(frozen=True)
class Slot:
    """A typed argument and result (tests/e2e/test_typed_arguments_e2e.py)."""

    start: datetime.datetime
    minutes: int


@app.task(queue="typed")
def book(room: uuid.UUID, slot: Slot, price: decimal.Decimal, *, day: datetime.date | None = None) -> Slot:
    """Check in the worker that every argument arrived as its annotated type."""
    if not (type(room) is uuid.UUID and type(slot) is Slot and type(price) is decimal.Decimal):
        raise TypeError(f"arrived as {type(room).__name__}, {type(slot).__name__}, {type(price).__name__}")
    if day is not None and type(day) is not datetime.date:
        raise TypeError(f"day arrived as {type(day).__name__}")
    return Slot(slot.start + datetime.timedelta(minutes=slot.minutes), int(price))


@app.task
def spin(seconds: float) -> None:
    """Busy for ``seconds`` in short sleeps, never looking at a cancel (docs/job-control.md)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


@app.task
async def await_long(seconds: float) -> None:
    """Suspended for ``seconds`` on the worker's event loop."""
    import asyncio

    await asyncio.sleep(seconds)
