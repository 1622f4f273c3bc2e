"""Helpers of the dashboard tests: credentials, CSRF tokens, jobs put in given states."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from conveyor import Conveyor
from conveyor.priority import Fairness
from conveyor.records import Outcome

TOKEN = "test-token-4f1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Client:
    """HTTP requests that keep no cookies: each sends exactly the ``cookies`` it is given."""

    def request(self, method: str, url: str, cookies: Any = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in dict(cookies).items())
        return httpx.request(method, url, headers=headers, timeout=10, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


def csrf_of(html: str) -> str:
    """The CSRF token of the first form of a page."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def make_dead(
    app: Conveyor,
    queue: str = "default",
    error_type: str = "ValueError",
    message: str = "boom",
    now: float | None = None,
) -> str:
    """Reserve one ready job of ``queue`` and bury it (at ``now``); returns its id."""
    broker = app.broker
    [delivery] = broker.reserve([queue], 1, 30.0, "test-worker", Fairness(app.priorities.weights))
    error = {
        "attempt": delivery.attempt,
        "type": error_type,
        "message": message,
        "traceback": f"Traceback (most recent call last):\n  ...\n{error_type}: {message}\n",
        "worker": "test-worker",
        "at": time.time(),
    }
    [status] = broker.ack([Outcome(delivery.id, delivery.token, "dead", error=error)], now=now)
    assert status.status == "ok"
    return delivery.id
