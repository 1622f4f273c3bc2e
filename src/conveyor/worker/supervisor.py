"""The supervisor: starts N worker processes, restarts the ones that die, stops them gracefully."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

from conveyor.worker.loop import WorkerConfig
from conveyor.worker.metrics_server import MetricsServer
from conveyor.worker.process import CONFIG_ERROR, config_to_json

log = logging.getLogger("conveyor.supervisor")


@dataclass
class _Child:
    slot: int
    proc: subprocess.Popen[bytes]
    started: float
    restarts: int = 0


class Supervisor:
    """Keeps ``processes`` workers of ``app_path`` running until SIGTERM/SIGINT.

    A worker that dies (killed, crashed by a poison task) is restarted with a backoff that grows
    while it keeps dying young; its tasks come back through lease expiry and reclaim. A worker
    that exits with CONFIG_ERROR (the store refused it, a library is missing) is not: the
    supervisor stops the others and exits with that code, as a restart cannot help. In burst
    mode a worker that exits with 0 has drained its queues and is not restarted; the supervisor
    exits with 0 once every one has. With ``metrics``, the supervisor serves the merged metrics of its workers (see metrics_server).
    """

    def __init__(
        self, app_path: str, config: WorkerConfig, processes: int = 1, metrics: MetricsServer | None = None
    ) -> None:
        self.app_path = app_path
        self.config = config
        self.processes = processes
        self.metrics = metrics
        self.children: list[_Child] = []
        self._stopping = False

    def _spawn(self, slot: int, restarts: int = 0) -> _Child:
        cmd = [sys.executable, "-m", "conveyor.worker.process", self.app_path, config_to_json(self.config)]
        env = None if self.metrics is None else os.environ | self.metrics.child_env()
        proc = subprocess.Popen(cmd, env=env)
        log.info("worker process %d started (pid %d)", slot, proc.pid)
        return _Child(slot, proc, time.monotonic(), restarts)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self._stopping:
            log.info(
                "stopping: %s received, workers finish their tasks (grace %.0f s)",
                signal.Signals(signum).name,
                self.config.grace,
            )
        self._stop_children()

    def _stop_children(self) -> None:
        self._stopping = True
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Supervise until stopped; returns the exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.metrics is not None:
            self.metrics.start()
        try:
            return self._supervise()
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def _supervise(self) -> int:
        self.children = [self._spawn(i) for i in range(self.processes)]
        restart_at: dict[int, float] = {}
        exit_code = 0
        drained: set[int] = set()
        while not self._stopping:
            now = time.monotonic()
            for i, child in enumerate(self.children):
                code = child.proc.poll()
                if code is None or child.slot in drained:
                    continue
                if code == 0 and self.config.burst:  # done draining: not restarted
                    drained.add(child.slot)
                    continue
                if code == CONFIG_ERROR and not exit_code:
                    log.error(
                        "worker process %d (pid %d) cannot start (configuration error, above): not restarting;"
                        " stopping",
                        child.slot,
                        child.proc.pid,
                    )
                    exit_code = CONFIG_ERROR
                    self._stop_children()
                    break
                if child.slot not in restart_at:
                    young = now - child.started < 30
                    restarts = child.restarts + 1 if young else 0
                    delay = min(0.5 * 2 ** max(restarts - 1, 0), 10.0) if young else 0.0
                    log.warning(
                        "worker process %d (pid %d) died with code %s; restarting in %.1f s",
                        child.slot,
                        child.proc.pid,
                        code,
                        delay,
                    )
                    restart_at[child.slot] = now + delay
                    child.restarts = restarts
                    if self.metrics is not None:
                        self.metrics.process_dead(child.proc.pid)
                elif now >= restart_at[child.slot]:
                    del restart_at[child.slot]
                    self.children[i] = self._spawn(child.slot, child.restarts)
            if len(drained) == len(self.children):
                log.info("burst done: every worker process drained its queues")
                break
            time.sleep(0.05)
        deadline = time.monotonic() + self.config.grace + 10
        for child in self.children:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                log.error("worker process %d did not stop in time; killing it", child.slot)
                child.proc.kill()
                child.proc.wait()
        return exit_code
