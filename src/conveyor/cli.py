"""The ``conveyor`` command line."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
import msgspec
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from conveyor import names
from conveyor.app import CANCEL_GRACE, RESERVED, Conveyor, Task
from conveyor.brokers import is_memory_url, redact_url
from conveyor.brokers.availability import one_line
from conveyor.errors import ConfigurationError, ConveyorError, StoreUnavailable
from conveyor.records import JobInfo, Pause, QueueStats, WorkerInfo
from conveyor.redact import Redactor, printable, redact_job
from conveyor.startup import AppLoadError, load_app, missing_sqlite_file, store_label, task_lines
from conveyor.worker.loop import WorkerConfig
from conveyor.worker.process import CONFIG_ERROR

console = Console(width=None if sys.stdout.isatty() else 200)  # pipes get whole rows
#: Characters of stored text shown per cell of a listing (the whole text: `conveyor job`).
LIST_TEXT = 300
STATES = ("ready", "scheduled", "running", "succeeded", "dead", "cancelled")


def _target(target: str) -> Conveyor:
    """MODULE:APP, or a store URL for the commands that only read and manage the store."""
    if "://" in target:
        return Conveyor(target)
    return load_app(target)


def _existing(app: Conveyor) -> Conveyor:
    """``app``, unless its store is a SQLite file that does not exist: reading it would create an
    empty store, most often beside the one meant (a command run from another directory)."""
    missing = missing_sqlite_file(app.url)
    if missing is not None:
        raise click.ClickException(
            f"no store at {missing}: no producer or worker has used that file. A relative SQLite"
            " path is relative to the current directory: give every producer, worker and command"
            " the same absolute URL (sqlite:////path/to/conveyor.db, or CONVEYOR_URL)"
        )
    return app


def _resolve_task(app: Conveyor, name: str) -> Task[Any, Any]:
    matches = names.matching(app.tasks, name)
    if len(matches) == 1:
        return app.tasks[matches[0]]
    known = ", ".join(sorted(app.tasks)) or "none"
    raise click.BadParameter(f"no task {name!r} (registered: {known})", param_hint="TASK")


def _when(ts: object) -> str:
    """A stored time as local time; one that no calendar holds (hostile or corrupt) as it is."""
    if ts is None:
        return "-"
    try:
        return dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="milliseconds")  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return printable(repr(ts))[:40]


class _ConfigExit(click.ClickException):
    """A configuration error of ``conveyor worker``: the exit code its processes use for one."""

    exit_code = CONFIG_ERROR


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AppLoadError as exc:
            if exc.traceback:  # raised by the user's module while importing it: their traceback
                click.echo(exc.traceback, err=True, nl=False)
            raise click.ClickException(str(exc)) from None
        except ConveyorError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@click.group(cls=_Group)
@click.version_option(package_name="conveyor-queue", prog_name="conveyor")
def main() -> None:
    """Conveyor: a task queue with priorities, delays, retries and a dead letter queue."""


@main.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.option(
    "--queues",
    "-q",
    default="default",
    show_default=True,
    help="Comma-separated queues to serve, each NAME or NAME:WEIGHT; each priority level's slots are"
    " split across them by weight (default 1 each: equal shares).",
)
@click.option("--strict", is_flag=True, help="Serve the queues in the order listed instead of sharing.")
@click.option(
    "--processes", "-p", default=1, show_default=True, type=click.IntRange(1), help="Worker processes."
)
@click.option(
    "--concurrency",
    "-c",
    default=16,
    show_default=True,
    type=click.IntRange(1),
    help="Tasks at once per process.",
)
@click.option("--lease", default=30.0, show_default=True, type=click.FloatRange(0.05), help="Lease seconds.")
@click.option("--heartbeat", default=None, type=click.FloatRange(0.01), help="Heartbeat seconds [lease/3].")
@click.option(
    "--grace", default=30.0, show_default=True, type=click.FloatRange(0), help="Shutdown grace seconds."
)
@click.option(
    "--burst",
    is_flag=True,
    help="Drain, then exit 0: stop once no job of the queues is ready or running here and none"
    " is scheduled within --burst-wait seconds.",
)
@click.option(
    "--burst-wait",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="With --burst: seconds ahead a scheduled job (a delay, a retry) is waited for.",
)
@click.option("--log-level", default="INFO", show_default=True)
@click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Serve Prometheus /metrics on this port.",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Address of the /metrics server."
)
@click.option(
    "--unknown-task-window",
    default=600.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds a job of a task this worker does not know is put back for another worker"
    " (a rolling deploy) before it goes to the dead letter queue; 0: at once.",
)
def worker(
    app_path: str,
    queues: str,
    strict: bool,
    processes: int,
    concurrency: int,
    lease: float,
    heartbeat: float | None,
    grace: float,
    log_level: str,
    metrics_port: int | None,
    metrics_host: str,
    burst: bool,
    burst_wait: float,
    unknown_task_window: float,
) -> None:
    """Run worker processes for MODULE:APP until SIGTERM or Ctrl-C (with --burst: until drained).

    At start it prints its store and its tasks by queue, warns about served queues without a
    task and tasks whose queue is not served, and stops with one line if the application or
    the store is wrong (docs/troubleshooting.md). With --metrics-port, /metrics requires
    CONVEYOR_METRICS_TOKEN (or the dashboard's credentials) to be set, and every scrape to
    present it.
    """
    from conveyor.web.credentials import Credentials
    from conveyor.worker.metrics_server import MetricsServer
    from conveyor.worker.supervisor import Supervisor

    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
    )
    os.environ["CONVEYOR_LOG_LEVEL"] = log_level
    names = [q.strip() for q in queues.split(",") if q.strip()]
    try:
        config = WorkerConfig(
            queues=names,
            strict=strict,
            concurrency=concurrency,
            lease=lease,
            heartbeat=heartbeat,
            grace=grace,
            burst=burst,
            burst_wait=burst_wait,
            unknown_task_window=unknown_task_window,
        )
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--queues") from None
    try:
        app = load_app(app_path)
    except AppLoadError as exc:
        if exc.traceback:
            click.echo(exc.traceback, err=True, nl=False)
        raise _ConfigExit(str(exc)) from None
    if is_memory_url(app.url):
        raise click.ClickException(
            f"{app_path} uses an in-memory store ({redact_url(app.url)}), which the worker processes"
            " cannot open: in tests, run its tasks in the test's process with conveyor.testing.drain(app);"
            " otherwise use a file (sqlite:///path.db) or a server"
        )
    _check_worker(app, app_path, config, processes)
    metrics = None
    if metrics_port is not None:
        try:
            metrics = MetricsServer(app, metrics_host, metrics_port, Credentials.from_env(metrics=True))
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(
                f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc}"
            ) from None
    sys.exit(Supervisor(app_path, config, processes, metrics).run())


def _check_worker(app: Conveyor, app_path: str, config: WorkerConfig, processes: int) -> None:
    """Say what the worker will serve from where, and stop with one line (exit CONFIG_ERROR) if
    the store refuses it or cannot be opened; a store that does not answer is waited for."""
    log = logging.getLogger("conveyor")
    served = config.queue_names
    log.info(
        "supervising %d process(es) of %s, queues %s",
        processes,
        app_path,
        ",".join(config.queues) + (" (strict order)" if config.strict else ""),
    )
    new = missing_sqlite_file(app.url) is not None
    log.info(
        "store: %s%s", store_label(app.url), " (a new file: created now, no job in it yet)" if new else ""
    )
    lines, warnings = task_lines(app, served)
    for line in lines:
        log.info("%s", line)
    for warning in warnings:
        log.warning("%s", warning)
    _probe(app, log)


def _probe(app: Conveyor, log: logging.Logger, wait: float = 3.0) -> None:
    """Connect to the store once (a SQLite file is created, a PostgreSQL schema migrated): a store
    that refuses the worker or cannot be opened ends the command with one line; one that does
    not answer within ``wait`` seconds is left to the worker processes, which wait for it."""
    failed: list[BaseException] = []

    def probe() -> None:
        try:
            app.broker.paused()
        except Exception as exc:  # noqa: BLE001 - sorted below
            failed.append(exc)
        finally:
            app.close()

    thread = threading.Thread(target=probe, name="conveyor-probe", daemon=True)
    thread.start()
    thread.join(wait)
    if thread.is_alive():
        log.warning(
            "store %s has not answered within %.0f s; the worker processes wait for it",
            store_label(app.url),
            wait,
        )
        return
    for exc in failed:
        if isinstance(exc, ConfigurationError):
            raise _ConfigExit(str(exc))
        if isinstance(exc, StoreUnavailable):
            log.warning("%s; the worker processes wait for it", exc)
        else:
            log.warning("store %s: %s; the worker processes try again", store_label(app.url), one_line(exc))


@main.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.argument("task_name", metavar="TASK")
@click.option("--args", "args_json", default="[]", help="JSON array of positional arguments.")
@click.option("--kwargs", "kwargs_json", default="{}", help="JSON object of keyword arguments.")
@click.option("--priority", default=None, help="Priority level name or index.")
@click.option("--delay", default=None, type=float, help="Seconds before it may start.")
@click.option("--key", default=None, help="Idempotency key.")
@click.option("--queue", default=None, help="Queue (default: the task's).")
def enqueue(
    app_path: str,
    task_name: str,
    args_json: str,
    kwargs_json: str,
    priority: str | None,
    delay: float | None,
    key: str | None,
    queue: str | None,
) -> None:
    """Enqueue TASK with JSON arguments; prints the job id."""
    app = load_app(app_path)
    task = _resolve_task(app, task_name)
    try:
        args, kwargs = json.loads(args_json), json.loads(kwargs_json)
    except (ValueError, RecursionError) as exc:  # bad JSON, a number too long, nesting too deep
        raise click.BadParameter(f"not usable JSON: {printable(str(exc))[:200]}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args must be a JSON array and --kwargs a JSON object")
    if clash := sorted(RESERVED.intersection(kwargs)):
        raise click.BadParameter(
            f"--kwargs names {', '.join(clash)}: enqueue options, given with their own flags",
            param_hint="--kwargs",
        )
    level: str | int | None = priority
    if priority is not None and priority.isascii() and priority.isdigit():
        level = int(priority)
    job = task.enqueue(*args, priority=level, delay=delay, key=key, queue=queue, **kwargs)
    click.echo(job.id if job.created else f"{job.id} (existing job with key {key!r})")


@main.command()
@click.argument("target", metavar="MODULE:APP|URL")
@click.option("--queue", "queues", multiple=True, help="Only these queues (repeatable).")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
def status(target: str, queues: tuple[str, ...], watch: bool) -> None:
    """Per queue and priority: ready, scheduled, running, succeeded, dead, cancelled; oldest ready
    age; ready jobs that limits hold back (see `conveyor limits list`); the live workers of
    each queue, flagging a queue with ready jobs that no live worker serves."""
    app = _existing(_target(target))
    if not watch:
        console.print(_fit(_status(app, queues)))
        return
    from rich.live import Live

    try:  # around the first draw too: Ctrl-C may come while it is on the screen
        with Live(_fit(_status(app, queues)), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(1)
                live.update(_fit(_status(app, queues)))
    except KeyboardInterrupt:
        pass


#: Headers of the status tables in a terminal narrower than NARROW columns, with lighter rules.
_SHORT = {"priority": "prio", "scheduled": "sched", "running": "run", "succeeded": "done"}
_SHORT |= {"cancelled": "cncl", "oldest ready": "oldest", "throttled": "held"}
NARROW = 120


def _fit(shown: Group) -> Group:
    """The status tables fitted to the terminal: names (left-aligned columns) fold onto more
    lines rather than being cut with an ellipsis; a terminal narrower than NARROW gets short
    headers and light rules, so numbers and names keep their room."""
    narrow = console.width < NARROW
    for table in shown.renderables:
        if not isinstance(table, Table):
            continue
        if narrow:
            table.box = box.SIMPLE_HEAD
            table.collapse_padding = True
        for i, column in enumerate(table.columns):
            if narrow and isinstance(column.header, str):
                column.header = _SHORT.get(column.header, column.header)
            if column.justify != "right":
                column.overflow = "fold"
                column.min_width = 8 if i == 0 else column.min_width
    return shown


def _status(app: Conveyor, queues: tuple[str, ...]) -> Group:
    """The status table, with the pauses, the unserved queues and the workers under it."""
    workers = app.broker.workers()
    stats = app.broker.stats(list(queues) or None)
    shown: list[Table | Text] = [_status_table(app, queues, stats, workers)]
    pauses = app.broker.paused(list(queues) or None)
    if pauses:
        shown.append(Text("paused: ", style="bold yellow") + Text(", ").join(_pause_label(p) for p in pauses))
    served = {q for w in workers for q in w.queues}
    for qs in stats:
        ready = sum(qs.counts.get("ready", {}).values())
        if ready and qs.queue not in served:
            shown.append(
                Text("unserved: ", style="bold red")
                + _plain(
                    f"queue {qs.queue} has {ready} ready job(s) and no live worker serves it (live workers"
                    f" serve: {', '.join(sorted(served)) or 'none'}); start one with --queues {qs.queue}"
                )
            )
    if workers:
        shown.append(_workers_table(workers, queues))
    return Group(*shown)


def _workers_table(workers: list[WorkerInfo], queues: tuple[str, ...]) -> Table:
    table = Table(title=f"live workers ({len(workers)})")
    for col in ("worker", "queues", "running", "slots", "up since"):
        table.add_column(col)
    for w in workers:
        if queues and not set(queues) & set(w.queues):
            continue
        table.add_row(
            _plain(w.id),
            _plain(",".join(w.queues)),
            str(w.in_flight),
            str(w.concurrency),
            _when(w.started_at),
        )
    return table


def _pause_label(p: Pause) -> Text:
    return _plain(p.queue if p.task is None else f"{p.queue} (task {p.task})")


def _status_table(
    app: Conveyor, queues: tuple[str, ...], stats: list[QueueStats], workers: list[WorkerInfo]
) -> Table:
    table = Table(title=f"Conveyor {store_label(app.url)}")
    table.add_column("queue")
    table.add_column("priority")
    for state in STATES:
        table.add_column(state, justify="right")
    table.add_column("oldest ready", justify="right")
    table.add_column("throttled", justify="right")
    table.add_column("workers", justify="right")
    stopped = {p.queue for p in app.broker.paused(list(queues) or None) if p.task is None}
    for qs in stats:
        serving = str(sum(1 for w in workers if qs.queue in w.queues))
        levels = sorted({p for per in qs.counts.values() for p in per})
        for i, level in enumerate(levels):
            age = f"{qs.oldest_ready_age:.1f} s" if i == 0 and qs.oldest_ready_age is not None else ""
            cells = [str(qs.counts.get(s, {}).get(level, 0)) for s in STATES]
            name = _plain(qs.queue) + (Text(" (paused)", style="yellow") if qs.queue in stopped else "")
            held = str(qs.throttled) if i == 0 and qs.throttled else ""
            table.add_row(
                name if i == 0 else "",
                app.priorities.name(level),
                *cells,
                age,
                held,
                serving if i == 0 else "",
            )
    return table


@main.command()
@click.argument("target", metavar="MODULE:APP|URL")
@click.argument("job_id")
def job(target: str, job_id: str) -> None:
    """Show one job: state, attempts, payload, result and every error."""
    app = _target(target)
    info = app.broker.get(job_id)
    if info is None:
        raise click.ClickException(f"no job {job_id}")
    _show(app, info)


@main.command()
@click.argument("target", metavar="MODULE:APP|URL")
@click.argument("job_id")
@click.option(
    "--grace",
    type=click.FloatRange(0, 86400),
    default=CANCEL_GRACE,
    show_default=True,
    help="Seconds a running sync task gets to stop on its own before it is interrupted.",
)
def cancel(target: str, job_id: str, grace: float) -> None:
    """Cancel a job, also while it runs (docs/job-control.md); print what happened."""
    app = _target(target)
    answer = app.job(job_id).cancel(grace=grace)
    click.echo(f"{job_id}: {answer}")
    if answer == "missing":
        raise SystemExit(1)


def _signature(app: Conveyor, info: JobInfo) -> inspect.Signature | None:
    task = app.tasks.get(info.task)
    return task.signature if task is not None else None


def _last_error(app: Conveyor, info: JobInfo) -> dict[str, Any]:
    """The job's last error, redacted with what its arguments tell, its message kept short."""
    if not info.errors or not isinstance(info.errors[-1], dict):
        return {}
    redactor = Redactor()
    redactor.arguments(info.payload, _signature(app, info))
    last = dict(info.errors[-1])
    last["message"] = redactor.text(str(last.get("message")), LIST_TEXT)
    last["type"] = redactor.text(str(last.get("type")), LIST_TEXT)
    return last


def _plain(value: object, multiline: bool = False) -> Text:
    """Stored text as rich Text: never read as markup, control characters escaped."""
    return Text(printable(str(value), multiline))


def _show(app: Conveyor, info: JobInfo) -> None:
    """One job, with secret-named arguments masked and scrubbed from its errors and result."""
    shown = redact_job(info, _signature(app, info))
    arguments, errors, key = shown.arguments, shown.errors, shown.key
    priority = app.priorities.name(info.priority)
    console.print(
        Text.assemble(
            (printable(info.id), "bold"),
            " ",
            _plain(info.task),
            " queue=",
            _plain(info.queue),
            f" priority={priority}",
        )
    )
    console.print(
        Text.assemble(
            "state: ",
            (printable(info.state), "bold"),
            " (cancel requested)" if info.cancelling else "",
            f"  attempt {info.attempt}/{info.max_attempts}  key=",
            _plain(key),
        )
    )
    console.print(
        f"enqueued {_when(info.enqueued_at)}  due {_when(info.run_at)}  started {_when(info.started_at)}"
        f"  finished {_when(info.finished_at)}",
        markup=False,
    )
    if arguments is None:
        console.print(f"payload: {len(info.payload)} bytes that do not decode (not shown)", markup=False)
    else:
        console.print(_plain(f"arguments: {json.dumps(arguments, ensure_ascii=False)}"), highlight=False)
    if info.progress is not None:
        message = f" {info.progress.message}" if info.progress.message else ""
        console.print(_plain(f"progress: {info.progress.value:.0%}{message}"), highlight=False)
    if shown.headers:
        console.print(_plain(f"headers: {json.dumps(shown.headers, ensure_ascii=False)}"), highlight=False)
    if shown.result is not None:
        console.print(_plain(f"result: {shown.result}", multiline=True), highlight=False)
    for err in errors:
        console.print(
            Text.assemble(
                (f"attempt {_plain(err.get('attempt'))}", "red"),
                f" {_when(err.get('at'))} on ",
                _plain(err.get("worker")),
                ": ",
                _plain(f"{err.get('type')}: {err.get('message')}"),
            ),
            highlight=False,
        )
        if err.get("traceback"):
            console.print(_plain(err["traceback"], multiline=True), highlight=False)


@main.group()
def dead() -> None:
    """The dead letter queue: list, show, replay, purge."""


@dead.command("list")
@click.argument("target", metavar="MODULE:APP|URL")
@click.option("--queue", default=None)
@click.option("--task", default=None)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dead_list(target: str, queue: str | None, task: str | None, limit: int, as_json: bool) -> None:
    """Dead jobs, most recent first."""
    app = _target(target)
    jobs = app.broker.dead(queue=queue, task=task, limit=limit)
    if as_json:
        for info in jobs:
            last = _last_error(app, info)
            click.echo(
                json.dumps(
                    {
                        "id": info.id,
                        "task": info.task,
                        "queue": info.queue,
                        "attempts": info.attempt,
                        "error": f"{last.get('type')}: {last.get('message')}",
                        "died": info.finished_at,
                    }
                )
            )
        return
    table = Table(title=f"dead letter queue ({len(jobs)} shown)")
    for col in ("id", "task", "queue", "attempts", "died", "last error"):
        table.add_column(col)
    for info in jobs:
        last = _last_error(app, info)
        table.add_row(
            _plain(info.id),
            _plain(info.task),
            _plain(info.queue),
            str(info.attempt),
            _when(info.finished_at),
            _plain(f"{last.get('type')}: {last.get('message')}"),
        )
    console.print(table)


@dead.command("show")
@click.argument("target", metavar="MODULE:APP|URL")
@click.argument("job_id")
def dead_show(target: str, job_id: str) -> None:
    """A dead job with its payload and every attempt's error and traceback."""
    app = _target(target)
    info = app.broker.get(job_id)
    if info is None or info.state != "dead":
        raise click.ClickException(f"no dead job {job_id}")
    _show(app, info)
    from conveyor.dead_reason import gave_up

    console.print(Text.assemble(("gave up: ", "bold red"), gave_up(info) or "-"), highlight=False)


@dead.command("replay")
@click.argument("target", metavar="MODULE:APP|URL")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead job.")
@click.option("--queue", default=None, help="Replay into this queue instead.")
def dead_replay(target: str, job_ids: tuple[str, ...], replay_all: bool, queue: str | None) -> None:
    """Make dead jobs ready again with their attempts reset."""
    if bool(job_ids) == replay_all:
        raise click.UsageError("give job ids or --all")
    app = _target(target)
    if replay_all:
        click.echo(f"replayed {app.broker.replay(None, queue=queue)} job(s)")
        return
    ids = list(dict.fromkeys(job_ids))
    missing = [i for i in ids if (info := app.broker.get(i)) is None or info.state != "dead"]
    found = [i for i in ids if i not in missing]
    count = app.broker.replay(found, queue=queue) if found else 0
    click.echo(f"replayed {count} job(s)")
    if missing:
        raise click.ClickException(
            f"not in the dead letter queue (no such job, or not dead): {', '.join(printable(i) for i in missing)}"
        )


@dead.command("purge")
@click.argument("target", metavar="MODULE:APP|URL")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "purge_all", is_flag=True, help="Delete every dead job.")
def dead_purge(target: str, job_ids: tuple[str, ...], purge_all: bool) -> None:
    """Delete dead jobs for good."""
    if bool(job_ids) == purge_all:
        raise click.UsageError("give job ids or --all")
    app = _target(target)
    count = app.broker.purge(None if purge_all else list(job_ids))
    click.echo(f"purged {count} job(s)")


@main.group()
def queue() -> None:
    """Pause and resume queues, or tasks in them (see docs/flow-control.md)."""


@queue.command("pause")
@click.argument("target", metavar="MODULE:APP|URL")
@click.argument("queue_name", metavar="QUEUE")
@click.option("--task", default=None, help="Pause only this task's jobs in the queue.")
def queue_pause(target: str, queue_name: str, task: str | None) -> None:
    """Stop every worker from starting jobs of QUEUE; enqueues are still accepted, running jobs
    finish. When this returns, no job of it starts until `conveyor queue resume`."""
    _target(target).pause(queue_name, task)
    click.echo(f"paused {queue_name}" + (f" (task {task})" if task else ""))


@queue.command("resume")
@click.argument("target", metavar="MODULE:APP|URL")
@click.argument("queue_name", metavar="QUEUE")
@click.option("--task", default=None, help="Resume only this task (paused with --task).")
def queue_resume(target: str, queue_name: str, task: str | None) -> None:
    """Let workers start jobs of QUEUE (or of --task in it) again, waking them at once."""
    _target(target).resume(queue_name, task)
    click.echo(f"resumed {queue_name}" + (f" (task {task})" if task else ""))


@queue.command("paused")
@click.argument("target", metavar="MODULE:APP|URL")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def queue_paused(target: str, as_json: bool) -> None:
    """The paused queues and tasks, with when they were paused."""
    pauses = _target(target).paused()
    if as_json:
        for p in pauses:
            click.echo(json.dumps({"queue": p.queue, "task": p.task, "since": p.since}))
        return
    table = Table(title=f"paused ({len(pauses)})")
    for col in ("queue", "task", "since"):
        table.add_column(col)
    for p in pauses:
        table.add_row(_plain(p.queue), "(whole queue)" if p.task is None else _plain(p.task), _when(p.since))
    console.print(table)


@main.command()
@click.argument("target", metavar="MODULE:APP|URL")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-auth", is_flag=True, help="Serve without authentication (trusted networks only).")
def dashboard(target: str, host: str, port: int, no_auth: bool) -> None:
    """Serve the web dashboard and /metrics.

    Authentication comes from the environment: CONVEYOR_DASHBOARD_TOKEN (Bearer header or the
    login form) and/or CONVEYOR_DASHBOARD_USER with CONVEYOR_DASHBOARD_PASSWORD (HTTP Basic).
    """
    import uvicorn

    from conveyor.web.app import create_app
    from conveyor.web.credentials import Credentials

    credentials = None if no_auth else Credentials.from_env()
    if credentials is not None and not credentials.configured:
        raise click.ClickException(
            "the dashboard needs credentials: set CONVEYOR_DASHBOARD_TOKEN, or CONVEYOR_DASHBOARD_USER and "
            "CONVEYOR_DASHBOARD_PASSWORD (or pass --no-auth to serve it to anyone who can reach it)"
        )
    app = _target(target)
    click.echo(f"Conveyor dashboard for {redact_url(app.url)} on http://{host}:{port}/")
    uvicorn.run(create_app(app, credentials), host=host, port=port, log_level="warning")


@main.command()
@click.option(
    "--tasks", "total", default=3000, show_default=True, type=click.IntRange(100), help="Tasks to enqueue."
)
@click.option("--processes", default=2, show_default=True, type=click.IntRange(1))
@click.option("--db", default="conveyor-demo.db", show_default=True, help="SQLite file (recreated).")
def demo(total: int, processes: int, db: str) -> None:
    """Run a realistic mixed workload on the embedded SQLite store and summarise it."""
    from conveyor.demo import run_demo

    run_demo(total=total, processes=processes, db=db, console=console)


@main.command()
@click.argument("url", envvar="CONVEYOR_URL")
@click.option(
    "--tasks", default=100_000, show_default=True, type=click.IntRange(100), help="No-op tasks per run."
)
@click.option("--workers", default="1,2,4", show_default=True, help="Worker process counts to compare.")
@click.option(
    "--concurrency", default=32, show_default=True, type=click.IntRange(1), help="Tasks at once per process."
)
@click.option(
    "--task", "task_name", default="noop", type=click.Choice(["noop", "anoop"]), help="Sync or async no-op."
)
@click.option(
    "--backlog",
    default=250_000,
    show_default=True,
    type=click.IntRange(1),
    help="Low no-ops queued behind the urgent ones.",
)
@click.option(
    "--samples",
    default=200,
    show_default=True,
    type=click.IntRange(1),
    help="Urgent and delayed tasks measured.",
)
@click.option(
    "--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Write results here."
)
def bench(
    url: str,
    tasks: int,
    workers: str,
    concurrency: int,
    task_name: str,
    backlog: int,
    samples: int,
    json_path: str | None,
) -> None:
    """Measure throughput, priority latency, delay accuracy and cost on the store at URL.

    Runs on fresh queues of that store (default $CONVEYOR_URL) with real worker processes.
    """
    from conveyor.benchmark import run, to_json

    try:
        counts = [int(w) for w in workers.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise click.BadParameter("--workers takes comma-separated process counts of 1 or more, e.g. 1,2,4")
    console.print(f"[bold]conveyor bench[/] on {redact_url(url)}")
    report = run(url, tasks, counts, task_name, backlog, samples, concurrency, console.print)
    if json_path:
        report.url = redact_url(url)
        Path(json_path).write_text(to_json(report))


@main.command()
@click.argument("url")
def migrate(url: str) -> None:
    """Create or upgrade a PostgreSQL store's schema (URL as for workers, ?schema=NAME included)."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise click.ClickException("migrate is for PostgreSQL URLs (SQLite creates its schema when opened)")
    import psycopg

    from conveyor.brokers.postgres import migrate as apply_migrations

    try:
        applied = apply_migrations(url)
    except psycopg.Error as exc:
        raise click.ClickException(f"{redact_url(url)}: {type(exc).__name__}: {exc}") from None
    if applied:
        click.echo(f"{redact_url(url)}: applied {', '.join(str(v) for v in applied)}")
    else:
        click.echo(f"{redact_url(url)}: up to date")


@main.command("redis-acl")
@click.argument("url")
@click.option("--user", default=None, help="ACL user name [the URL's, else conveyor].")
def redis_acl(url: str, user: str | None) -> None:
    """Print the least Redis ACL for the store at URL, an ACL SETUSER line for an administrator to
    run (docs/security.md); the password is left as PASSWORD."""
    from conveyor.brokers.redis.acl import for_url

    click.echo(for_url(url, user))


@main.group()
def limits() -> None:
    """Rate and concurrency limits in the store: list them, set or clear one at run time."""


@limits.command("list")
@click.argument("target", metavar="MODULE:APP|URL")
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def limits_list(target: str, queue: str | None, as_json: bool) -> None:
    """Limit keys with their rule, running jobs, tokens now and any throttle."""
    app = _target(target)
    rows = app.limits(queue)
    if as_json:
        for info in rows:
            click.echo(json.dumps(msgspec.to_builtins(info)))
        return
    table = Table(title=f"limits ({len(rows)} keys)")
    for col in (
        "queue",
        "key",
        "rate/s",
        "burst",
        "concurrency",
        "running",
        "tokens",
        "throttled until",
        "set",
    ):
        table.add_column(col)
    for info in rows:
        table.add_row(
            _plain(info.queue),
            _plain(info.key or "(queue)"),
            f"{info.rate:g}" if info.rate else "-",
            str(info.burst) if info.rate else "-",
            str(info.concurrency or "-"),
            str(info.running),
            "-" if info.tokens is None else f"{info.tokens:g}",
            _when(info.closed_until),
            "run time" if info.override else "declared",
        )
    console.print(table)


@limits.command("set")
@click.argument("target", metavar="MODULE:APP|URL")
@click.argument("queue")
@click.argument("key", required=False)
@click.option("--rate", default=None, help="Starts allowed: N/s, N/m, N/h, N/d.")
@click.option(
    "--burst",
    default=None,
    type=int,
    help="Starts allowed at once after an idle spell (default: rate/10, at least 1).",
)
@click.option("--concurrency", default=None, type=int, help="Jobs running at once.")
def limits_set(
    target: str, queue: str, key: str | None, rate: str | None, burst: int | None, concurrency: int | None
) -> None:
    """Set a run-time limit on KEY in QUEUE (without KEY: on the whole queue); every worker
    applies it from its next claim, until `conveyor limits clear`."""
    app = _target(target)
    app.limit(queue, key, rate=rate, burst=burst, concurrency=concurrency)
    click.echo(f"limit set on {queue} {key or '(queue)'}")


@limits.command("clear")
@click.argument("target", metavar="MODULE:APP|URL")
@click.argument("queue")
@click.argument("key", required=False)
def limits_clear(target: str, queue: str, key: str | None) -> None:
    """Remove a run-time limit; the task's declared limit (if any) applies again."""
    app = _target(target)
    if not app.clear_limit(queue, key):
        raise click.ClickException(f"no run-time limit on {queue} {key or '(queue)'}")
    click.echo(f"limit cleared on {queue} {key or '(queue)'}")
