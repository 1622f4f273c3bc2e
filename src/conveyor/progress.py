"""Progress of running jobs (docs/hooks.md): checked, encoded as stored, and written by the worker
at most a few times per second, the latest report always kept."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from typing import TYPE_CHECKING, Any

import msgspec

from conveyor.errors import ConfigurationError
from conveyor.records import Progress

if TYPE_CHECKING:
    from conveyor.brokers import Broker

log = logging.getLogger("conveyor.worker")
MAX_MESSAGE = 200
#: Seconds between two writes of a worker's progress reports (each write takes all of them).
INTERVAL = 0.25
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Progress)


def checked(value: float, message: str | None) -> Progress:
    """A report as stored, or ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0.0 <= value <= 1.0):
        raise ConfigurationError(f"progress must be a number from 0 to 1, got {value!r:.40}")
    if message is not None and (not isinstance(message, str) or len(message) > MAX_MESSAGE):
        raise ConfigurationError(f"a progress message is a str of at most {MAX_MESSAGE} characters")
    return Progress(float(value), message)


def encode(progress: Progress) -> str:
    return _encoder.encode(progress).decode()


def decode(stored: Any) -> Progress | None:
    """Progress as stored (JSON text or bytes, or a decoded list); None for none or unreadable."""
    if stored is None or stored in (b"", ""):
        return None
    try:
        p = msgspec.convert(stored, Progress) if isinstance(stored, list) else _decoder.decode(stored)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
        return None
    return p if math.isfinite(p.value) else None


class Reporter:
    """Collects the progress reports of a worker's runs and writes them in batches from its event
    loop, one write at a time and at most every ``INTERVAL`` seconds; a report replaced before its
    write is never written, the latest one always is (unless the job ended first: a write is fenced
    by the run's token and state, so a late one changes nothing)."""

    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        self._broker = broker
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], str] = {}
        self._scheduled = False

    def report(self, job_id: str, token: int, progress: Progress) -> None:
        """From any thread."""
        with self._lock:
            self._pending[job_id, token] = encode(progress)
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._flush()))

    async def _flush(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending, {}
                if not batch:
                    self._scheduled = False
                    return
            try:
                await asyncio.to_thread(self._broker.set_progress, [(i, t, p) for (i, t), p in batch.items()])
            except Exception as exc:  # noqa: BLE001 - progress is best effort: the job goes on
                log.warning("progress of %d job(s) not stored: %s", len(batch), exc)
            await asyncio.sleep(INTERVAL)
