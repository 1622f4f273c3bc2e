"""Fixtures of the dashboard tests: the real Starlette app served by uvicorn on a loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import uvicorn
from web_helpers import TOKEN, Client

from conveyor import Conveyor
from conveyor.web.app import create_app
from conveyor.web.credentials import Credentials

BEARER = Credentials(token=TOKEN)
Serve = Callable[..., contextlib.AbstractContextManager[str]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``with serve(app, credentials) as base_url:`` serves the dashboard until the block ends."""

    @contextlib.contextmanager
    def start(app: Conveyor, credentials: Credentials | None = BEARER) -> Iterator[str]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(app, credentials), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "dashboard did not start"
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()

    yield start


@pytest.fixture
def client() -> Client:
    """An HTTP client without a cookie jar that does not follow redirects (tests look at both)."""
    return Client()
