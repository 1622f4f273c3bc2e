"""Noticing an event loop that something blocks: an async task calling ``time.sleep``, a
blocking client or a long computation stops every other task of the worker, its heartbeats too,
so its leases run out and its jobs are run again elsewhere.

A coroutine on the loop notes the time every ``interval``; a thread checks it. When the loop has
not noted the time for ``threshold`` seconds, the thread logs a warning naming the async task
whose code is on the loop thread's stack (read with ``sys._current_frames``), and again once
the stall passes the lease. A stall that ended is logged with how long it lasted.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType

log = logging.getLogger("conveyor.worker")


class StallWatch:
    """Warns while the worker's event loop is blocked for longer than ``threshold`` seconds.

    Args:
        codes: the code objects of the async task functions, by code, with the task's name.
        running: the job ids running now of a task, by task name (read from the watch thread:
            a snapshot, so it never fails while the loop changes it).
    """

    def __init__(
        self,
        threshold: float,
        lease: float,
        codes: dict[CodeType, str],
        running: Callable[[str], list[str]],
    ) -> None:
        self.threshold = threshold
        self.lease = lease
        self.interval = min(0.25, threshold / 4)
        self.codes = codes
        self.running = running
        self._tick = time.monotonic()
        self._loop_thread: int | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> asyncio.Task[None]:
        """Begin watching the running loop (call on it); returns its ticker, to cancel at the end."""
        self._loop_thread = threading.get_ident()
        self._tick = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="conveyor-stall-watch", daemon=True)
        self._thread.start()
        return asyncio.get_running_loop().create_task(self._ticker())

    def stop(self) -> None:
        self._done.set()

    async def _ticker(self) -> None:
        while True:
            self._tick = time.monotonic()
            await asyncio.sleep(self.interval)

    def _watch(self) -> None:
        warned = 0  # 1: the threshold was reported for the current stall; 2: the lease too
        culprit, lag_was = "the event loop", 0.0
        while not self._done.wait(self.interval):
            lag = time.monotonic() - self._tick
            if lag < self.threshold:
                if warned:
                    log.warning("%s blocked the event loop for %.1f s in all", culprit, lag_was)
                warned = 0
                continue
            lag_was = lag
            if warned == 0:
                culprit = self._culprit()
                log.warning(
                    "%s has blocked the event loop for %.1f s: no other task, heartbeat or"
                    " acknowledgement of this worker runs meanwhile, and past the lease (%.0f s) its"
                    " jobs are run again elsewhere; await non-blocking calls, or run blocking ones"
                    " with asyncio.to_thread or as a sync task",
                    culprit,
                    lag,
                    self.lease,
                )
                warned = 1
            elif warned == 1 and lag >= self.lease:
                log.error(
                    "%s has blocked the event loop for %.1f s, past the lease (%.0f s): this worker's"
                    " leases are being lost",
                    culprit,
                    lag,
                    self.lease,
                )
                warned = 2

    def _culprit(self) -> str:
        """The async task (and its running jobs) whose code is on the loop thread's stack now."""
        frame: FrameType | None = sys._current_frames().get(self._loop_thread or 0)
        while frame is not None:
            name = self.codes.get(frame.f_code)
            if name is not None:
                try:
                    jobs = self.running(name)
                except RuntimeError:  # the loop moved on and changed its books meanwhile
                    jobs = []
                shown = f" (job {', '.join(jobs[:5])}{', ...' if len(jobs) > 5 else ''})" if jobs else ""
                return f"async task {name}{shown}"
            frame = frame.f_back
        return "something on the event loop (no async task's code on its stack)"
