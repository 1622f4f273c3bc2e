"""Authentication on every route, CSRF on every POST, and security headers on every response.

One ASGI middleware wraps the whole dashboard, so no route (a page, the JSON API, /metrics, a
404) answers without credentials:

- ``Authorization: Bearer TOKEN`` or HTTP Basic, checked in constant time; or
- a session cookie (HttpOnly, SameSite=Strict) set by ``POST /login`` with the token, revoked
  by ``POST /logout`` (see ``sessions``).

Without credentials: 401, with ``WWW-Authenticate`` challenges and, for a browser, the login
form. Every POST carries a CSRF token (form field ``csrf`` or header ``X-CSRF-Token``): an HMAC,
under a per-process random key, of who is asking (the session, the Basic user, the bearer, or
"anonymous" with ``--no-auth``); the login form's is bound to a nonce cookie. A POST without a
valid one gets 403.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.web.credentials import Credentials, same
from conveyor.web.sessions import Sessions
from conveyor.web.throttle import Throttle, tried

SESSION_COOKIE = "conveyor_session"
LOGIN_COOKIE = "conveyor_login"
log = logging.getLogger("conveyor.dashboard")
MAX_BODY = 1 << 20
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Renders the login page: (request, next URL, CSRF token, error or None) -> HTML.
LoginPage = Callable[[Request, str, str, str | None], str]


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class Security:
    """The dashboard's guard; ``credentials=None`` serves without authentication (``--no-auth``)."""

    def __init__(self, app: ASGIApp, credentials: Credentials | None, login_page: LoginPage) -> None:
        self.app = app
        self.credentials = credentials
        self.login_page = login_page
        self.throttle = Throttle()
        self._csrf_key = secrets.token_bytes(32)
        token = credentials.token if credentials is not None else None
        self.sessions = None if token is None else Sessions(token)

    # -- tokens --------------------------------------------------------------------------------

    def csrf_token(self, principal: str) -> str:
        """The CSRF token of POSTs made by ``principal``."""
        return _mac(self._csrf_key, f"csrf:{principal}")

    def principal(self, request: Request) -> str | None:
        """Who is asking, or None when unauthenticated; a wrong ``Authorization`` counts as a failure."""
        if self.credentials is None:
            return "anonymous"
        authorization = request.headers.get("authorization")
        who = self.credentials.principal(authorization)
        if who is not None:
            return who
        if authorization is not None:
            self.throttle.failed(_client(request), time.time(), tried(authorization))
        if self.sessions is None:
            return None
        sid = self.sessions.check(request.cookies.get(SESSION_COOKIE), time.time())
        return None if sid is None else f"session:{sid}"

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate, check CSRF, then call the app; every response gets the security headers,
        and an unexpected error is a plain 500 and one log line (the traceback at DEBUG)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(16)
        scope.setdefault("state", {})["nonce"] = nonce
        guarded = _Send(send, nonce)
        try:
            await self._guard(scope, receive, guarded)
        except Exception as exc:
            log.error(
                "%s %r failed: %s: %.300r",
                scope.get("method"),
                scope.get("path"),
                type(exc).__name__,
                str(exc),
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            if not guarded.started:
                await PlainTextResponse("internal error (logged by the dashboard)", 500)(
                    scope, receive, guarded
                )

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["state"]
        request = Request(scope)
        unsafe = request.method not in SAFE_METHODS
        body = await _read_body(receive) if unsafe else b""
        if body is None:
            await PlainTextResponse("request body too large", 413)(scope, receive, send)
            return
        login = request.method == "POST" and request.url.path == "/login"
        if self.credentials is not None and (login or "authorization" in request.headers):
            wait = self.throttle.retry_after(_client(request), time.time())
            if wait is not None:
                await _too_many(wait)(scope, receive, send)
                return
        if login:
            await self._login(request, body)(scope, receive, send)
            return
        principal = self.principal(request)
        if principal is None:
            await self._unauthorized(request)(scope, receive, send)
            return
        state["principal"] = principal
        state["csrf"] = self.csrf_token(principal)
        if unsafe:
            if not same(_csrf_of(request, body), state["csrf"]):
                await PlainTextResponse("missing or invalid CSRF token", 403)(scope, receive, send)
                return
            if request.url.path == "/logout":
                await self._logout(request)(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _unauthorized(self, request: Request, error: str | None = None) -> Response:
        challenges = self.credentials.challenges() if self.credentials is not None else []
        wants_html = "text/html" in request.headers.get("accept", "")
        if not (wants_html and self.sessions is not None):
            response: Response = PlainTextResponse("authentication required", 401)
        else:
            nonce = secrets.token_urlsafe(16)
            path = request.url.path if request.method == "GET" else "/"
            target = f"{path}?{request.url.query}" if request.url.query and request.method == "GET" else path
            html = self.login_page(request, target, self.csrf_token(f"login:{nonce}"), error)
            response = HTMLResponse(html, 401)
            _cookie(response, request, LOGIN_COOKIE, nonce, 600)
        for challenge in challenges:
            response.headers.append("WWW-Authenticate", challenge)
        return response

    def _login(self, request: Request, body: bytes) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not same(_csrf_of(request, body), self.csrf_token(f"login:{nonce}")):
            return PlainTextResponse("missing or invalid CSRF token", 403)
        form = parse_qs(body.decode(errors="replace"))
        token = form.get("token", [""])[-1]
        if self.credentials is None or not self.credentials.check_token(token):
            self.throttle.failed(_client(request), time.time(), "login form token")
            return self._unauthorized(request, "wrong token")
        target = form.get("next", ["/"])[-1]
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/"
        response = RedirectResponse(target, 303)
        assert self.sessions is not None
        session = self.sessions.new(time.time())
        _cookie(response, request, SESSION_COOKIE, session, self.sessions.seconds)
        response.delete_cookie(LOGIN_COOKIE)
        return response

    def _logout(self, request: Request) -> Response:
        if self.sessions is not None:
            self.sessions.revoke(request.cookies.get(SESSION_COOKIE), time.time())
        response = RedirectResponse("/", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _too_many(wait: float) -> Response:
    seconds = max(1, math.ceil(wait))
    return PlainTextResponse(
        f"too many failed authentications: retry in {seconds} s", 429, {"Retry-After": str(seconds)}
    )


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _csrf_of(request: Request, body: bytes) -> str:
    """The CSRF token a request presents: the ``X-CSRF-Token`` header or the form field ``csrf``."""
    header = request.headers.get("x-csrf-token")
    if header:
        return header
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return parse_qs(body.decode(errors="replace")).get("csrf", [""])[-1]
    return ""


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when it exceeds ``MAX_BODY``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` handing the app the body the middleware already read, then the client's."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class _Send:
    """``send`` adding a nonce-based Content-Security-Policy and the other security headers, and
    noting whether the response has started."""

    def __init__(self, send: Send, nonce: str) -> None:
        self._send = send
        self.started = False
        self._policy = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = MutableHeaders(scope=message)
            headers["Content-Security-Policy"] = self._policy
            headers["X-Frame-Options"] = "DENY"
            headers["X-Content-Type-Options"] = "nosniff"
            headers["Referrer-Policy"] = "same-origin"
            headers.setdefault("Cache-Control", "no-store")
        await self._send(message)
