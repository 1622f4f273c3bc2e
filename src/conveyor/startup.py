"""What the worker and the CLI check and say when they start: the application named by
``MODULE:APP``, the store it uses, and the tasks each queue has (docs/troubleshooting.md)."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from conveyor.app import Conveyor
from conveyor.brokers import absolute_url, redact_url
from conveyor.errors import ConfigurationError

#: Frames of these directories are left out of a user module's import traceback.
_NOT_THEIRS = (
    str(Path(__file__).resolve().parent),
    str(Path(importlib.__file__).resolve().parent),
    "<frozen",
)


class AppLoadError(ConfigurationError):
    """``MODULE:APP`` does not name a Conveyor application. ``traceback`` holds the traceback of
    an exception raised by the module's own code while it was imported (their bug, not ours)."""

    def __init__(self, message: str, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


def load_app(path: str) -> Conveyor:
    """Import ``module:attribute`` (the current directory is importable) and return the app.

    Raises:
        AppLoadError: one line that says what was imported from where: the module is not
            found (with the current directory and PYTHONPATH), it has no such attribute, the
            attribute is not a Conveyor application, or importing it raised (with the
            traceback of the user's code).
    """
    module_name, colon, attr = path.partition(":")
    if not colon or not module_name or not attr:
        raise AppLoadError(f"expected MODULE:APP (for instance myproject.tasks:app), got {path!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            pythonpath = os.environ.get("PYTHONPATH") or "unset"
            raise AppLoadError(
                f"cannot import {module_name!r} (from {path}): no module named {missing!r} in the current"
                f" directory {cwd} or on PYTHONPATH ({pythonpath}); run the command from the directory"
                f" that holds {missing.replace('.', '/')}.py (or its package), or add that directory"
                " to PYTHONPATH"
            ) from None
        raise _raised(module_name, exc) from None
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises is reported
        raise _raised(module_name, exc) from None
    where = f"{module_name} ({getattr(module, '__file__', None) or 'no file'})"
    apps = sorted(name for name, value in vars(module).items() if isinstance(value, Conveyor))
    found = (
        f"Conveyor applications there: {', '.join(f'{module_name}:{name}' for name in apps)}"
        if apps
        else "it defines no Conveyor application at module level"
    )
    if not hasattr(module, attr):
        raise AppLoadError(f"module {where} has no attribute {attr!r}; {found}")
    app = getattr(module, attr)
    if not isinstance(app, Conveyor):
        raise AppLoadError(
            f"{path} is a {type(app).__name__}, not a Conveyor application, in {where}; {found}"
        )
    return app


def _raised(module_name: str, exc: Exception) -> AppLoadError:
    """An exception raised while importing the user's module, with its traceback trimmed to
    their frames (no importlib, no Conveyor)."""
    shown = traceback.TracebackException.from_exception(exc)
    shown.stack = traceback.StackSummary.from_list(
        [f for f in shown.stack if not f.filename.startswith(_NOT_THEIRS)]
    )
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return AppLoadError(
        f"importing {module_name!r} raised {text[:300]} (the traceback above is from that module's code)",
        traceback="".join(shown.format()),
    )


def store_label(url: str) -> str:
    """The store as a user should see it: its URL with the password hidden and a SQLite file's
    path absolute (``sqlite:////home/me/app/conveyor.db``)."""
    return redact_url(absolute_url(url))


def missing_sqlite_file(url: str) -> str | None:
    """The absolute path of a SQLite store whose file does not exist (None otherwise): reading
    it would create an empty store, most often beside the one the user meant."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        return None
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path.startswith(":") or os.path.exists(path):
        return None
    return os.path.abspath(path)


def task_lines(app: Conveyor, served: Sequence[str]) -> tuple[list[str], list[str]]:
    """A line per served queue with its registered tasks, and at most three warnings: served
    queues without a task, tasks whose queue is not served, no task at all."""
    by_queue: dict[str, list[str]] = {}
    for task in app.tasks.values():
        by_queue.setdefault(task.queue, []).append(task.name)
    lines = [f"queue {queue} (served): {_names(by_queue.get(queue, [])) or 'no task'}" for queue in served]
    warnings = []
    idle = [queue for queue in served if queue not in by_queue]
    if idle and app.tasks:
        warnings.append(
            f"served queue(s) {', '.join(idle)} have no registered task: only jobs enqueued to them with"
            f" queue=... run there (a typo? the tasks' queues: {_names(sorted(by_queue))})"
        )
    unserved = [queue for queue in by_queue if queue not in served]
    if unserved:
        warnings.append(
            "tasks whose queue this worker does not serve (their jobs wait for a worker that does,"
            f" --queues {','.join([*served, *unserved])}): "
            + "; ".join(f"{queue}: {_names(by_queue[queue])}" for queue in unserved)
        )
    if not app.tasks:
        warnings.append("no task is registered: this worker can run no job")
    return lines, warnings


def _names(names: Sequence[str], most: int = 20) -> str:
    shown = sorted(names)
    more = f" and {len(shown) - most} more" if len(shown) > most else ""
    return ", ".join(shown[:most]) + more
