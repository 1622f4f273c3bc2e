"""Entry point of one worker process: ``python -m conveyor.worker.process MODULE:APP CONFIG_JSON``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from dataclasses import asdict

from conveyor.app import Conveyor
from conveyor.errors import ConfigurationError
from conveyor.startup import AppLoadError, load_app
from conveyor.worker.loop import Worker, WorkerConfig

__all__ = ["CONFIG_ERROR", "load_app", "main", "serve"]

log = logging.getLogger("conveyor.worker")
#: Exit code of a worker process that met a configuration error (sysexits' EX_CONFIG): the
#: store refused it, a library is missing, a URL is wrong. Restarting it cannot help.
CONFIG_ERROR = 78
#: The signal by which the supervisor forces its workers' stop (a second Ctrl-C or SIGTERM):
#: running tasks are released at once. SIGTERM and a first SIGINT stop gracefully.
FORCE = signal.SIGUSR2


def config_to_json(config: WorkerConfig) -> str:
    """Serialise a config for a child process; each child names itself."""
    data = asdict(config)
    data.pop("worker_id")
    data["queues"] = list(config.queues)
    return json.dumps(data)


def serve(app: Conveyor, config: WorkerConfig) -> None:
    """Run one worker until SIGTERM or SIGINT, then stop gracefully; a second SIGINT, or
    FORCE, ends the grace at once."""

    async def main() -> None:
        worker = Worker(app, config)
        loop = asyncio.get_running_loop()
        interrupts = 0

        def interrupted() -> None:  # Ctrl-C reaches every process of the terminal's group
            nonlocal interrupts
            interrupts += 1
            worker.stop(force=interrupts > 1)

        loop.add_signal_handler(signal.SIGTERM, worker.stop)
        loop.add_signal_handler(signal.SIGINT, interrupted)
        loop.add_signal_handler(FORCE, worker.stop, True)
        await worker.run()

    try:
        asyncio.run(main())
    finally:
        app.close()


def main() -> None:
    """Child process entry: serve, then leave without joining task threads still running."""
    logging.basicConfig(
        level=os.environ.get("CONVEYOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    code = 0
    try:
        app = load_app(sys.argv[1])
        serve(app, WorkerConfig(**json.loads(sys.argv[2])))
    except ConfigurationError as exc:
        if isinstance(exc, AppLoadError) and exc.traceback:
            sys.stderr.write(exc.traceback)
        log.error("worker cannot start: %s", exc)
        code = CONFIG_ERROR
    except Exception:
        log.exception("worker crashed")
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # abandoned task threads must not keep the process alive


if __name__ == "__main__":
    main()
