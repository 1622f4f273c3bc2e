"""Workers: a supervisor of processes, each running a fetch/run/ack loop."""

from conveyor.worker.loop import Worker, WorkerConfig

__all__ = ["Worker", "WorkerConfig"]
