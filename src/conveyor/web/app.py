"""The dashboard's Starlette application."""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from conveyor.app import Conveyor
from conveyor.brokers import redact_url
from conveyor.web.credentials import Credentials
from conveyor.web.security import Security
from conveyor.web.views import Views

TEMPLATES = Path(__file__).parent / "templates"
YEAR = 365.25 * 86400


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    except (OverflowError, OSError, ValueError):
        # Beyond datetime's years 1-9999, or not a number: any writer to the store can put it there.
        return f"{ts:.6g} (Unix time)"
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    delta = time.time() - ts
    if math.isnan(delta):
        return "-"
    word = "ago" if delta >= 0 else "from now"
    return f"{_seconds(abs(delta))} {word}"


def _seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value < 0:
        return "-" + _seconds(-value)
    if math.isinf(value):
        return "forever"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    if value < 2 * YEAR:
        return f"{value / 3600:.1f} h"
    return f"{value / YEAR:.3g} years"


def templates() -> Jinja2Templates:
    """The dashboard's templates with its filters (autoescaping on)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters.update(when=_when, ago=_ago, seconds=_seconds)
    return Jinja2Templates(env=env)


def create_app(app: Conveyor, credentials: Credentials | None) -> Starlette:
    """The dashboard of ``app``.

    Args:
        credentials: who may use it; None serves it without authentication (``--no-auth``:
            only for a dashboard reachable by trusted users alone).
    """
    tpl = templates()
    views = Views(app, tpl, redact_url(app.url))

    def login_page(request: Request, target: str, csrf: str, error: str | None) -> str:
        return tpl.get_template("login.html").render(
            request=request, next=target, csrf=csrf, error=error, store=views.store
        )

    routes = [
        Route("/", views.overview),
        Route("/api/overview", views.api_overview),
        Route("/metrics", views.metrics_endpoint),
        Route("/queues/{queue}", views.queue),
        Route("/queues/{queue}/{action}", views.queue_action, methods=["POST"]),
        Route("/jobs/{id}", views.job),
        Route("/jobs/{id}/{action}", views.job_action, methods=["POST"]),
        Route("/dead", views.dead),
        Route("/dead/{action}", views.dead_action, methods=["POST"]),
        Route("/scheduled", views.scheduled),
        Route("/workers", views.workers),
        Route("/tasks", views.tasks),
        Route("/search", views.search),
        Route("/limits", views.limits),
        Route("/limits/{action}", views.limit_action, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Security, credentials=credentials, login_page=login_page)],
        exception_handlers={HTTPException: views.http_error},
    )
