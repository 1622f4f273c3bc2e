"""The dashboard's pages and JSON: each reads the store through the broker's read operations only
(``stats``, ``jobs``, ``dead``, ``get``, ``workers``, ``paused``) and acts through ``replay``,
``purge``, ``cancel``, ``pause`` and ``resume``."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from conveyor import names
from conveyor.app import CANCEL_GRACE, Conveyor
from conveyor.dead_reason import gave_up
from conveyor.errors import ConfigurationError, KeyConflict
from conveyor.metrics import store_registry
from conveyor.records import JobInfo
from conveyor.redact import Redactor, redact_job
from conveyor.web.rates import Sampler, quantile, start_delays

T = TypeVar("T")
STATES = ("ready", "scheduled", "running", "succeeded", "dead", "cancelled")
PAGE = 50
#: The most dead jobs one DLQ view or bulk action goes through.
DLQ_SCAN = 10_000
MAX_OFFSET = 1_000_000
#: Characters of an error message shown in the DLQ list (the job page shows all of it).
LIST_MESSAGE = 160
#: Running jobs the Workers page reads (all workers together), and shows per worker.
RUNNING_SHOWN = 1000
RUNNING_PER_WORKER = 20
#: The Tasks page's window (seconds), and the most recently finished jobs of each outcome
#: (succeeded, dead) it reads to cover it.
TASK_WINDOW = 3600
TASK_SCAN = 2000
#: Jobs of each state an argument search reads at most (ready and scheduled: the soonest due;
#: running: all; succeeded and dead: the most recent): a search costs at most five bounded
#: listings. Cancelled jobs are not searched: Redis keeps them in one index with the succeeded
#: ones, so listing the most recent cancelled jobs can walk every finished job.
SEARCH_SCAN = 500
SEARCH_STATES = ("ready", "scheduled", "running", "dead", "succeeded")
#: The longest name, id or filter a request may pass to the store.
MAX_TEXT = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SINCE = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}


@dataclass(frozen=True)
class DeadFilter:
    """The DLQ filters: queue, task name, error type and how long ago the job died.

    The task is the registered dotted name or its last part, as the CLI takes it: resolved
    against the application's tasks when it names one; otherwise (a store URL target, or a
    name no registered task has) a dotted name is matched exactly by the store and a short one
    against each scanned job's task, its last part included (``names.designates``).
    """

    queue: str | None
    task: str | None
    error: str | None
    since: str | None
    #: The registered task names ``task`` resolved to (empty: none of them; see above).
    resolved: tuple[str, ...] = ()

    @classmethod
    def parse(cls, params: Any, known: Iterable[str] = ()) -> DeadFilter:
        """From query parameters or form fields; empty values mean no filter."""

        def get(name: str) -> str | None:
            value = _text(str(params.get(name) or "").strip(), name)
            return value or None

        since, task = get("since"), get("task")
        resolved = tuple(names.matching(known, task)) if task else ()
        return cls(get("queue"), task, get("error"), since if since in SINCE else None, resolved)

    def query(self) -> str:
        """The filters as a query string."""
        fields = {"queue": self.queue, "task": self.task, "error": self.error, "since": self.since}
        return urlencode({k: v for k, v in fields.items() if v})

    @property
    def store_task(self) -> str | None:
        """The task name the store filters by, when one exact name is meant."""
        if len(self.resolved) == 1:
            return self.resolved[0]
        if not self.resolved and self.task is not None and "." in self.task:
            return self.task
        return None

    def matches(self, info: JobInfo) -> bool:
        """Whether a dead job passes the filters the store did not apply (task, error type)."""
        if self.task is not None and self.store_task is None:
            if self.resolved:
                if info.task not in self.resolved:
                    return False
            elif not names.designates(self.task, info.task):
                return False
        if self.error is None:
            return True
        last = info.errors[-1] if info.errors else {}
        return str(last.get("type", "")).lower() == self.error.lower()


class Views:
    """Request handlers bound to one application."""

    def __init__(self, app: Conveyor, templates: Jinja2Templates, store: str) -> None:
        self.app = app
        self.templates = templates
        self.store = store
        self.sampler = Sampler()
        self.metrics = store_registry(lambda: app.broker, app.priorities, app.max_queued)

    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(fn, *args, **kwargs)

    def _page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(store=self.store, priorities=self.app.priorities)
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def _problem(self, request: Request, status: int, heading: str, what: str) -> Response:
        return self._page(request, "problem.html", status, nav="", heading=heading, what=what)

    # -- overview ------------------------------------------------------------------------------

    def overview_data(self) -> dict[str, Any]:
        """Depths per queue and priority, outcome rates, latency and the chart's series."""
        broker = self.app.broker
        now = time.time()
        stats = broker.stats(now=now)
        pauses = broker.paused()
        stopped = {p.queue for p in pauses if p.task is None}
        workers = broker.workers(now=now)
        recent = broker.jobs(state="succeeded", limit=200, now=now)
        self.sampler.observe(now, workers, recent)
        rates = self.sampler.rates()
        rows = []
        for qs in stats:
            for level in sorted({p for per in qs.counts.values() for p in per}):
                rate = rates.by_level.get((qs.queue, level), {}) if rates is not None else None
                row: dict[str, Any] = {
                    "queue": qs.queue,
                    "paused": qs.queue in stopped,
                    "priority": self.app.priorities.name(level),
                    **{
                        s: qs.counts.get(s, {}).get(level, 0)
                        for s in ("ready", "scheduled", "running", "dead")
                    },
                    "succeeded_per_min": None if rate is None else round(rate.get("succeeded", 0.0), 1),
                    "failed_per_min": None if rate is None else round(rate.get("failed", 0.0), 1),
                }
                rows.append(row)
        delays = start_delays(recent)
        return {
            "at": now,
            "rows": rows,
            "paused": [{"queue": p.queue, "task": p.task, "since": p.since} for p in pauses],
            "workers": len(workers),
            "in_flight": sum(w.in_flight for w in workers),
            "succeeded_per_min": None if rates is None else round(rates.succeeded, 1),
            "failed_per_min": None if rates is None else round(rates.failed, 1),
            "delay": {"n": len(delays), "p50": quantile(delays, 0.5), "p95": quantile(delays, 0.95)},
            "series": self.sampler.series(),
        }

    async def overview(self, request: Request) -> Response:
        """GET /: every queue at a glance, with the live chart."""
        data = await self._read(self.overview_data)
        return self._page(request, "overview.html", data=data, nav="overview")

    async def api_overview(self, request: Request) -> Response:
        """GET /api/overview: the overview as JSON (polled by the chart)."""
        return JSONResponse(await self._read(self.overview_data))

    async def metrics_endpoint(self, request: Request) -> Response:
        """GET /metrics: the store gauges in Prometheus text format."""
        body = await self._read(generate_latest, self.metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # -- queues and jobs -----------------------------------------------------------------------

    async def queue(self, request: Request) -> Response:
        """GET /queues/{queue}: counts per priority and state, and the jobs of one state."""
        name = _text(request.path_params["queue"], "queue")
        state = request.query_params.get("state", "ready")
        state = state if state in STATES else "ready"
        offset = _offset(request)
        stats = await self._read(self.app.broker.stats, [name])
        pauses = await self._read(self.app.broker.paused, [name])
        jobs = await self._read(self.app.broker.jobs, queue=name, state=state, limit=PAGE + 1, offset=offset)
        counts = stats[0].counts if stats else {}
        levels = sorted({p for per in counts.values() for p in per})
        return self._page(
            request,
            "queue.html",
            nav="overview",
            queue=name,
            state=state,
            states=STATES,
            counts=counts,
            levels=levels,
            oldest=stats[0].oldest_ready_age if stats else None,
            throttled=stats[0].throttled if stats else 0,
            paused=next((p for p in pauses if p.task is None), None),
            paused_tasks=[p for p in pauses if p.task is not None],
            jobs=[_row(j) for j in jobs[:PAGE]],
            offset=offset,
            more=len(jobs) > PAGE,
            page=PAGE,
        )

    async def queue_action(self, request: Request) -> Response:
        """POST /queues/{queue}/{pause|resume}: the whole queue, or the form's ``task`` in it."""
        name, action = _text(request.path_params["queue"], "queue"), request.path_params["action"]
        if action not in ("pause", "resume"):
            return self._problem(request, 404, "Not found", f"no action {action}")
        form = await request.form()
        task = _text(str(form.get("task") or "").strip(), "task") or None
        act = self.app.broker.pause if action == "pause" else self.app.broker.resume
        try:
            await self._read(act, name, task)
        except ConfigurationError as exc:
            return self._problem(request, 400, f"Cannot {action}", str(exc))
        return RedirectResponse(f"/queues/{quote(name, safe='')}", 303)

    async def job(self, request: Request) -> Response:
        """GET /jobs/{id}: payload, result, every attempt's error with traceback, timeline."""
        info = await self._read(self.app.broker.get, _text(request.path_params["id"], "job id"))
        if info is None:
            return self._problem(request, 404, "Not found", f"no job {request.path_params['id']}")
        task = self.app.tasks.get(info.task)
        shown = await run_in_threadpool(redact_job, info, task.signature if task is not None else None)
        arguments = shown.arguments
        return self._page(
            request,
            "job.html",
            nav="dead" if info.state == "dead" else "overview",
            job=info,
            arguments=None if arguments is None else json.dumps(arguments, indent=2, ensure_ascii=False),
            payload_size=len(info.payload),
            result=shown.result,
            errors=shown.errors,
            timeline=_timeline(info, shown.errors),
            key=shown.key,
            gave_up=gave_up(info),
            headers=shown.headers,
        )

    async def job_action(self, request: Request) -> Response:
        """POST /jobs/{id}/{action}: replay or purge a dead job, cancel a pending or running one
        (docs/job-control.md)."""
        job_id, action = _text(request.path_params["id"], "job id"), request.path_params["action"]
        broker = self.app.broker
        if action == "replay":
            form = await request.form()
            queue = _text(str(form.get("queue") or "").strip(), "queue") or None
            try:
                await self._read(broker.replay, [job_id], queue=queue)
            except KeyConflict as exc:
                return self._problem(request, 409, "Cannot replay", str(exc))
        elif action == "purge":
            await self._read(broker.purge, [job_id])
            return RedirectResponse("/dead?purged=1", 303)
        elif action == "cancel":
            await self._read(broker.request_cancel, job_id, CANCEL_GRACE)
        else:
            return self._problem(request, 404, "Not found", f"no action {action}")
        return RedirectResponse(f"/jobs/{job_id}", 303)

    # -- dead letter queue ---------------------------------------------------------------------

    def _dead_matching(self, f: DeadFilter, want: int) -> tuple[list[JobInfo], bool]:
        """Up to ``want`` dead jobs passing the filters, newest first, and whether more exist."""
        cutoff = time.time() - SINCE[f.since] if f.since else None
        found: list[JobInfo] = []
        offset = 0
        while offset < DLQ_SCAN:
            chunk = self.app.broker.dead(queue=f.queue, task=f.store_task, limit=500, offset=offset)
            offset += len(chunk)
            for info in chunk:
                if cutoff is not None and (info.finished_at or 0) < cutoff:
                    return found, False
                if f.matches(info):
                    if len(found) == want:
                        return found, True
                    found.append(info)
            if len(chunk) < 500:
                break
        return found, offset >= DLQ_SCAN

    async def dead(self, request: Request) -> Response:
        """GET /dead: the dead letter queue, filtered by queue, task, error type and time."""
        f = DeadFilter.parse(request.query_params, self.app.tasks)
        offset = _offset(request)
        jobs, more = await self._read(self._dead_matching, f, offset + PAGE)
        rows = await self._read(self._dead_rows, jobs[offset:])
        return self._page(
            request,
            "dead.html",
            nav="dead",
            filters=f,
            since_choices=list(SINCE),
            jobs=rows,
            offset=offset,
            more=more,
            page=PAGE,
            tasks=sorted(self.app.tasks),
            replayed=request.query_params.get("replayed"),
            purged=request.query_params.get("purged"),
            error=request.query_params.get("error_message"),
        )

    def _dead_rows(self, jobs: list[JobInfo]) -> list[dict[str, Any]]:
        """Rows of the DLQ list with the last error's message, redacted (secret-named arguments
        scrubbed from it, as on the job page), on one line and cut to LIST_MESSAGE characters."""
        rows = []
        for info in jobs:
            row = _row(info)
            last = info.errors[-1] if info.errors else {}
            message = last.get("message") if isinstance(last, dict) else None
            if message is not None:
                task = self.app.tasks.get(info.task)
                redactor = Redactor()
                redactor.arguments(info.payload, task.signature if task is not None else None)
                row["error_message"] = redactor.line(str(message), LIST_MESSAGE)
            rows.append(row)
        return rows

    async def dead_action(self, request: Request) -> Response:
        """POST /dead/{replay|purge}: the checked jobs, or every job matching the filters."""
        action = request.path_params["action"]
        if action not in ("replay", "purge"):
            return self._problem(request, 404, "Not found", f"no action {action}")
        form = await request.form()
        f = DeadFilter.parse(form, self.app.tasks)
        if form.get("scope") == "matching":
            jobs, _ = await self._read(self._dead_matching, f, DLQ_SCAN)
            ids = [j.id for j in jobs]
        else:
            ids = [_text(str(v), "job id") for v in form.getlist("ids")]
        back = f.query()
        try:
            if action == "replay":
                queue = _text(str(form.get("into") or "").strip(), "queue") or None
                count = await self._read(self.app.broker.replay, ids, queue=queue) if ids else 0
            else:
                count = await self._read(self.app.broker.purge, ids) if ids else 0
        except KeyConflict as exc:
            return RedirectResponse(f"/dead?{back}&{urlencode({'error_message': str(exc)})}", 303)
        done = "replayed" if action == "replay" else "purged"
        return RedirectResponse(f"/dead?{back}&{done}={count}", 303)

    # -- limits --------------------------------------------------------------------------------

    async def limits(self, request: Request) -> Response:
        """GET /limits: every limit key with its rule, slots held, tokens and throttle."""
        rows = await self._read(self.app.broker.limits)
        return self._page(
            request,
            "limits.html",
            nav="limits",
            limits=rows,
            message=request.query_params.get("done"),
            error=request.query_params.get("error_message"),
        )

    async def limit_action(self, request: Request) -> Response:
        """POST /limits/{set|clear}: a run-time limit on a queue or one of its keys."""
        action = request.path_params["action"]
        if action not in ("set", "clear"):
            return self._problem(request, 404, "Not found", f"no action {action}")
        form = await request.form()
        queue = _text(str(form.get("queue") or "").strip(), "queue")
        key = _text(str(form.get("key") or "").strip(), "key") or None
        try:
            if action == "set":
                rate = str(form.get("rate") or "").strip() or None
                burst = _optional_int(form.get("burst"), "burst")
                concurrency = _optional_int(form.get("concurrency"), "concurrency")
                await self._read(self.app.limit, queue, key, rate=rate, burst=burst, concurrency=concurrency)
                done = f"limit set on {queue} {key or '(queue)'}"
            else:
                cleared = await self._read(self.app.clear_limit, queue, key)
                done = f"limit {'cleared' if cleared else 'was not set'} on {queue} {key or '(queue)'}"
        except ConfigurationError as exc:
            return RedirectResponse(f"/limits?{urlencode({'error_message': str(exc)})}", 303)
        return RedirectResponse(f"/limits?{urlencode({'done': done})}", 303)

    # -- scheduled and workers -----------------------------------------------------------------

    async def scheduled(self, request: Request) -> Response:
        """GET /scheduled: periodic schedules and delayed jobs, soonest first."""
        offset = _offset(request)
        jobs = await self._read(self.app.broker.jobs, state="scheduled", limit=PAGE + 1, offset=offset)
        now = time.time()
        schedules = [
            {
                "task": s.task.name,
                "queue": s.task.queue,
                "when": f"cron {s.cron} (UTC)" if s.cron else f"every {s.every:g} s",
                "catch_up": s.catch_up,
                "next": s.next_after(now),
            }
            for s in self.app.schedules
        ]
        return self._page(
            request,
            "scheduled.html",
            nav="scheduled",
            schedules=schedules,
            jobs=[_row(j) for j in jobs[:PAGE]],
            offset=offset,
            more=len(jobs) > PAGE,
            page=PAGE,
        )

    async def workers(self, request: Request) -> Response:
        """GET /workers: live workers with the jobs each runs now, in-flight count and last heartbeat."""
        workers = await self._read(self.app.broker.workers)
        running = await self._read(self.app.broker.jobs, state="running", limit=RUNNING_SHOWN)
        by_worker: dict[str, list[JobInfo]] = {}
        for info in running:
            by_worker.setdefault(info.worker or "", []).append(info)
        return self._page(
            request,
            "workers.html",
            nav="workers",
            workers=workers,
            running=by_worker,
            shown=RUNNING_PER_WORKER,
            capped=len(running) >= RUNNING_SHOWN,
        )

    # -- per-task statistics -------------------------------------------------------------------

    def task_stats(self, now: float | None = None) -> dict[str, Any]:
        """Per task over the last TASK_WINDOW seconds: succeeded, failed attempts, dead, and run
        time percentiles, from the TASK_SCAN most recently finished jobs of each outcome."""
        broker = self.app.broker
        now = time.time() if now is None else now
        cutoff = now - TASK_WINDOW
        per: dict[str, dict[str, Any]] = {}
        covered = float(TASK_WINDOW)

        def slot(task: str) -> dict[str, Any]:
            return per.setdefault(task, {"task": task, "succeeded": 0, "failed": 0, "dead": 0, "runs": []})

        for state in ("succeeded", "dead"):
            jobs = broker.jobs(state=state, limit=TASK_SCAN, now=now)
            recent = [j for j in jobs if j.finished_at is not None and j.finished_at >= cutoff]
            if len(jobs) == TASK_SCAN and len(recent) == TASK_SCAN:  # the window reaches past the scan
                covered = min(covered, now - min(j.finished_at or now for j in recent))
            for info in recent:
                row = slot(info.task)
                row[state] += 1
                row["failed"] += sum(
                    1
                    for e in info.errors
                    if isinstance(e, dict) and isinstance(e.get("at"), int | float) and e["at"] >= cutoff
                )
                if state == "succeeded" and info.started_at is not None and info.finished_at is not None:
                    seconds = info.finished_at - info.started_at
                    if math.isfinite(seconds):
                        row["runs"].append(max(0.0, seconds))
        rows = []
        for task in sorted(per):
            row = per[task]
            runs = row.pop("runs")
            row.update(p50=quantile(runs, 0.5), p95=quantile(runs, 0.95))
            rows.append(row)
        return {"rows": rows, "window": TASK_WINDOW, "covered": covered, "scan": TASK_SCAN}

    async def tasks(self, request: Request) -> Response:
        """GET /tasks: per task, recent outcomes and run times."""
        data = await self._read(self.task_stats)
        return self._page(request, "tasks.html", nav="tasks", **data)

    # -- search --------------------------------------------------------------------------------

    def search_jobs(self, text: str) -> tuple[list[JobInfo], int]:
        """Jobs whose arguments (as shown: redacted) or idempotency key contain ``text``, case
        ignored; looks at the SEARCH_SCAN first jobs of each of SEARCH_STATES in its listing order. Returns
        the matches (at most PAGE) and how many jobs were looked at."""
        needle = text.casefold()
        found: list[JobInfo] = []
        looked = 0
        for state in SEARCH_STATES:
            for info in self.app.broker.jobs(state=state, limit=SEARCH_SCAN):
                looked += 1
                task = self.app.tasks.get(info.task)
                redactor = Redactor()
                arguments = redactor.arguments(info.payload, task.signature if task is not None else None)
                shown = "" if arguments is None else json.dumps(arguments, ensure_ascii=False)
                key = "" if info.key is None else redactor.text(info.key)
                if needle in shown.casefold() or needle in key.casefold():
                    found.append(info)
                    if len(found) == PAGE:
                        return found, looked
        return found, looked

    async def search(self, request: Request) -> Response:
        """GET /search?q=: an exact job id opens that job; any other text searches arguments."""
        text = _text(request.query_params.get("q", "").strip(), "search")
        if not text:
            return self._page(request, "search.html", nav="", q="", jobs=[], looked=0, scan=SEARCH_SCAN)
        if await self._read(self.app.broker.get, text) is not None:
            return RedirectResponse(f"/jobs/{quote(text, safe='')}", 303)
        jobs, looked = await self._read(self.search_jobs, text)
        return self._page(
            request,
            "search.html",
            nav="",
            q=text,
            jobs=[_row(j) for j in jobs],
            looked=looked,
            scan=SEARCH_SCAN,
            full=len(jobs) == PAGE,
        )

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """An unknown path or a bad request (reached only with valid credentials)."""
        assert isinstance(exc, HTTPException)
        what = request.url.path if exc.status_code == 404 else exc.detail
        response = self._problem(
            request, exc.status_code, HTTPStatus(exc.status_code).phrase.capitalize(), what
        )
        response.headers.update(exc.headers or {})
        return response


def _text(value: str, what: str) -> str:
    """``value`` when a store can hold it as text; a 400 for control characters (PostgreSQL
    refuses NUL) or more than ``MAX_TEXT`` characters, none of which a name or id has."""
    if len(value) > MAX_TEXT or _CONTROL.search(value):
        raise HTTPException(400, f"invalid {what}: control characters or more than {MAX_TEXT} characters")
    return value


def _optional_int(value: object, what: str) -> int | None:
    """A form's optional whole number; a 400 for anything else."""
    text = str(value or "").strip()
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise HTTPException(400, f"invalid {what}: a whole number")
    return int(text)


def _offset(request: Request) -> int:
    """The ``offset`` query parameter: absent or empty means 0; anything but 0-MAX_OFFSET is a 400."""
    value = request.query_params.get("offset") or "0"
    # Bounded before int(): a 5,000-digit string is a ValueError there, not a number.
    short = len(value) <= len(str(MAX_OFFSET)) and value.isascii() and value.isdigit()
    if short and int(value) <= MAX_OFFSET:
        return int(value)
    raise HTTPException(400, f"invalid offset: a whole number from 0 to {MAX_OFFSET}")


def _row(info: JobInfo) -> dict[str, Any]:
    """What a job list shows of a job; the DLQ list adds the last error's message, redacted
    (``Views._dead_rows``)."""
    last = info.errors[-1] if info.errors else {}
    return {
        "id": info.id,
        "task": info.task,
        "queue": info.queue,
        "priority": info.priority,
        "state": info.state,
        "attempt": info.attempt,
        "max_attempts": info.max_attempts,
        "run_at": info.run_at,
        "started_at": info.started_at,
        "finished_at": info.finished_at,
        "error_type": last.get("type"),
        "error_message": None,
    }


def _timeline(info: JobInfo, errors: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """The job's events in time order."""
    events = [(info.enqueued_at, "enqueued")]
    if info.run_at > info.enqueued_at + 0.001:
        events.append((info.run_at, "due"))
    events += [
        (float(e["at"]), f"attempt {e.get('attempt')} failed: {e.get('type')}")
        for e in errors
        if isinstance(e.get("at"), int | float)
    ]
    if info.started_at is not None:
        events.append((info.started_at, f"attempt {info.attempt} started"))
    if info.finished_at is not None:
        events.append((info.finished_at, info.state))
    return sorted(events)
