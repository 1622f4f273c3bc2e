"""Real worker processes for end-to-end tests: started, killed, stopped, always cleaned up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stores import Store
from waiting import wait_for

from conveyor import Conveyor
from conveyor.records import WorkerInfo

HERE = Path(__file__).parent


class Cluster:
    """Worker processes of ``e2e_app`` against one fresh store."""

    def __init__(self, tmp_path: Path, store: Store) -> None:
        self.store = store
        self.url = store.url
        self.exec_log = tmp_path / "executions.log"
        self.env = (
            os.environ
            | store.ledger_env
            | {
                "CONVEYOR_URL": self.url,
                "PYTHONPATH": str(HERE),
                "E2E_EXEC_LOG": str(self.exec_log),
                "CONVEYOR_LOG_LEVEL": "WARNING",
            }
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = tmp_path
        os.environ.update(store.ledger_env)
        os.environ["CONVEYOR_URL"] = self.url
        import e2e_app

        self.app: Conveyor = e2e_app.app
        self.app.close()
        self.app.url = self.url

    def worker(self, env: dict[str, str] | None = None, **config: Any) -> subprocess.Popen[bytes]:
        """One worker process (no supervisor), so a test can kill exactly it; ``env`` adds to
        its environment."""
        config.setdefault("queues", ["default"])
        cmd = [sys.executable, "-m", "conveyor.worker.process", "e2e_app:app", json.dumps(config)]
        return self._spawn(cmd, env)

    def supervisor(self, *args: str) -> subprocess.Popen[bytes]:
        """``conveyor worker e2e_app:app ARGS``."""
        cmd = [sys.executable, "-m", "conveyor", "worker", "e2e_app:app", "--log-level", "WARNING", *args]
        return self._spawn(cmd)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "conveyor", *args],
            check=False,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=self.env | (env or {}), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def pause(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGSTOP a worker started with ``env=PAUSABLE``, at a moment none of its threads is
        inside a store call (see ``e2e_app._pause``); return once it is stopped."""
        proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: _state(proc) == "T", what=f"worker {proc.pid} to stop")

    def resume(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGCONT)
        wait_for(lambda: _state(proc) != "T", what=f"worker {proc.pid} to resume")

    def worker_id(self, proc: subprocess.Popen[bytes]) -> str:
        """The id a worker process gives itself (and the store records on its jobs)."""
        return f"{socket.gethostname()}:{proc.pid}"

    def registered(self, proc: subprocess.Popen[bytes]) -> WorkerInfo | None:
        """What a worker process last reported with its heartbeat (its counts), if its entry in
        the store's worker registry is current."""
        return next((w for w in self.app.broker.workers() if w.id == self.worker_id(proc)), None)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("worker-*.log")))

    def ledger(self) -> list[int]:
        return self.store.ledger()

    def executions(self) -> list[str]:
        return self.exec_log.read_text().splitlines() if self.exec_log.exists() else []

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


#: Environment of a worker that ``Cluster.pause`` can stop.
PAUSABLE = {"E2E_PAUSABLE": "1"}


def _state(proc: subprocess.Popen[bytes]) -> str:
    """The process's state letter in /proc (``T``: stopped); what follows the last ``)``, since
    the command name in parentheses may contain anything."""
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def cluster_of(store: Store, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster on ``store``, torn down with everything it stored."""
    sys.path.insert(0, str(HERE))
    c = Cluster(tmp_path, store)
    try:
        yield c
    finally:
        c.stop_all()
        c.app.close()
        store.close()
        sys.path.remove(str(HERE))
