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
    """The registered tasks by queue (served queues first), and the warnings about queues served
    without a task and tasks whose queue is not served."""
    by_queue: dict[str, list[str]] = {q: [] for q in served}
    for task in app.tasks.values():
        by_queue.setdefault(task.queue, []).append(task.name)
    lines = []
    for queue, names in by_queue.items():
        state = "served" if queue in served else "NOT served"
        lines.append(f"queue {queue} ({state}): {', '.join(sorted(names)) or 'no task'}")
    warnings = [
        f"queue {queue!r} is served but no registered task has it as its queue: only jobs enqueued"
        f" to it with queue=... run there (a typo? queues of the tasks: {', '.join(sorted(_own(app))) or 'none'})"
        for queue in served
        if queue not in _own(app)
    ]
    unserved = {q: names for q, names in by_queue.items() if q not in served}
    warnings += [
        f"queue {queue!r} of {', '.join(sorted(names))} is not served by this worker: its jobs wait for a"
        f" worker that serves it (--queues {','.join([*served, queue])})"
        for queue, names in unserved.items()
    ]
    if not app.tasks:
        warnings.append("no task is registered: every job this worker reserves is unknown to it")
    return lines, warnings


def _own(app: Conveyor) -> set[str]:
    return {task.queue for task in app.tasks.values()}
