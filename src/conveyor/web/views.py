"""The dashboard's pages and JSON: each reads the store through the broker's read operations only
(``stats``, ``jobs``, ``dead``, ``get``, ``workers``, ``paused``) and acts through ``replay``,
``purge``, ``cancel``, ``pause`` and ``resume``."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
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

from conveyor.app import Conveyor
from conveyor.errors import ConfigurationError, KeyConflict
from conveyor.metrics import store_registry
from conveyor.records import JobInfo
from conveyor.redact import redact_job
from conveyor.web.rates import Sampler, quantile, start_delays

T = TypeVar("T")
STATES = ("ready", "scheduled", "running", "succeeded", "dead", "cancelled")
PAGE = 50
#: The most dead jobs one DLQ view or bulk action goes through.
DLQ_SCAN = 10_000
MAX_OFFSET = 1_000_000
#: The longest name, id or filter a request may pass to the store.
MAX_TEXT = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SINCE = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}


@dataclass(frozen=True)
class DeadFilter:
    """The DLQ filters: queue, task name, error type and how long ago the job died."""

    queue: str | None
    task: str | None
    error: str | None
    since: str | None

    @classmethod
    def parse(cls, params: Any) -> DeadFilter:
        """From query parameters or form fields; empty values mean no filter."""

        def get(name: str) -> str | None:
            value = _text(str(params.get(name) or "").strip(), name)
            return value or None

        since = get("since")
        return cls(get("queue"), get("task"), get("error"), since if since in SINCE else None)

    def query(self) -> str:
        """The filters as a query string."""
        return urlencode({k: v for k, v in vars(self).items() if v})

    def matches(self, info: JobInfo) -> bool:
        """Whether a dead job passes the error-type filter (queue and task are the broker's)."""
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
            headers=shown.headers,
        )

    async def job_action(self, request: Request) -> Response:
        """POST /jobs/{id}/{action}: replay or purge a dead job, cancel a pending one."""
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
            await self._read(broker.cancel, job_id)
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
            chunk = self.app.broker.dead(queue=f.queue, task=f.task, limit=500, offset=offset)
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
        f = DeadFilter.parse(request.query_params)
        offset = _offset(request)
        jobs, more = await self._read(self._dead_matching, f, offset + PAGE)
        return self._page(
            request,
            "dead.html",
            nav="dead",
            filters=f,
            since_choices=list(SINCE),
            jobs=[_row(j) for j in jobs[offset:]],
            offset=offset,
            more=more,
            page=PAGE,
            tasks=sorted(self.app.tasks),
            replayed=request.query_params.get("replayed"),
            purged=request.query_params.get("purged"),
            error=request.query_params.get("error_message"),
        )

    async def dead_action(self, request: Request) -> Response:
        """POST /dead/{replay|purge}: the checked jobs, or every job matching the filters."""
        action = request.path_params["action"]
        if action not in ("replay", "purge"):
            return self._problem(request, 404, "Not found", f"no action {action}")
        form = await request.form()
        f = DeadFilter.parse(form)
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
        """GET /workers: live workers with their in-flight tasks and last heartbeat."""
        workers = await self._read(self.app.broker.workers)
        return self._page(request, "workers.html", nav="workers", workers=workers)

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
    """What a job list shows of a job; error messages are left out (the job page redacts them)."""
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
