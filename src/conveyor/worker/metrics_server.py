"""``conveyor worker --metrics-port``: the supervisor serves /metrics for all its worker processes.

Design: prometheus-client's multiprocess mode. The supervisor makes a fresh directory and hands
it to its children only, as ``PROMETHEUS_MULTIPROC_DIR``; each worker process writes its
counters and histograms to its own memory-mapped files there. At every scrape the supervisor
merges the files of all children, those that died included, so counters never go backwards when
a child is restarted. A dead child is marked with ``mark_process_dead`` and its counter and
histogram files are added into one file of all dead children, then removed, so that a worker
restarted again and again leaves no pile of files to merge at every scrape. The store gauges are
computed by the supervisor itself from the broker at scrape time. The directory is removed when
the supervisor stops.

Slow clients: each connection is served on its own daemon thread with a socket timeout
(``client_timeout``), at most ``max_connections`` at once (more are closed on accept), and
stopping closes the open connections, so an idle or half-sent request delays neither a scrape
nor the supervisor's exit. Collection itself is serialized: one store query at a time.

Authentication: a scrape must present ``CONVEYOR_METRICS_TOKEN`` or the dashboard's credentials
(``Authorization: Bearer`` or Basic); without any set the server refuses to start. It listens on
``--metrics-host`` (default 127.0.0.1). Failed authentication is
throttled per client address as on the dashboard (``conveyor.web.throttle``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.mmap_dict import MmapedDict

from conveyor.app import Conveyor
from conveyor.errors import ConfigurationError
from conveyor.metrics import StoreCollector
from conveyor.web.credentials import Credentials
from conveyor.web.throttle import Throttle, tried

log = logging.getLogger("conveyor.supervisor")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsServer:
    """/metrics of a supervisor: its children's metrics merged, plus the store gauges.

    Args:
        client_timeout: seconds a connection may stay silent before it is closed.
        max_connections: connections served at once; more are closed when accepted.
    """

    def __init__(
        self,
        app: Conveyor,
        host: str,
        port: int,
        credentials: Credentials,
        client_timeout: float = 10.0,
        max_connections: int = 16,
    ) -> None:
        if not credentials.configured:
            raise ConfigurationError(
                "serving /metrics needs credentials: set CONVEYOR_METRICS_TOKEN (or the dashboard's "
                "CONVEYOR_DASHBOARD_TOKEN, or CONVEYOR_DASHBOARD_USER and CONVEYOR_DASHBOARD_PASSWORD)"
            )
        self.directory = tempfile.mkdtemp(prefix="conveyor-metrics-")
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        registry.register(StoreCollector(lambda: app.broker, app.priorities, app.max_queued))
        #: Held while a scrape reads the files and while a dead child's files are folded.
        self._files = threading.Lock()
        handler = _handler(registry, credentials, client_timeout, self._files)
        self.httpd = _Server((host, port), handler, max_connections)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="conveyor-metrics", daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self.httpd.server_address[1])

    def child_env(self) -> dict[str, str]:
        """Environment variables for worker processes."""
        return {MULTIPROC_ENV: self.directory}

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def process_dead(self, pid: int) -> None:
        """Bookkeeping for a worker process that exited: its counts are kept, its files go."""
        with self._files:
            multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]
            for kind in ("counter", "histogram"):  # every sample of these adds up across processes
                try:
                    _fold(
                        os.path.join(self.directory, f"{kind}_{pid}.db"),
                        os.path.join(self.directory, f"{kind}_{DEAD}.db"),
                    )
                except Exception:  # the supervisor goes on: the file stays, still merged
                    log.exception("folding the %s file of dead worker process %d failed", kind, pid)

    def close(self) -> None:
        """Stop serving, close the connections still open, and remove the directory."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd.drop_connections()
        shutil.rmtree(self.directory, ignore_errors=True)


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them; none is waited for."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int
    ) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._warned = -60.0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            now = time.monotonic()
            if now - self._warned >= 60:
                self._warned = now
                log.warning("metrics: %d connections open, closing new ones", len(self._open))
            self.shutdown_request(request)
            return
        with self._lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: socket.socket) -> None:
        with self._lock:
            self._open.discard(request)
        self._slots.release()

    def drop_connections(self) -> None:
        """Close every connection still being served (their threads then read end of file)."""
        with self._lock:
            connections = list(self._open)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning(
            "metrics: connection from %s failed", client_address[0], exc_info=log.isEnabledFor(logging.DEBUG)
        )


#: What stands for the pid in the names of the files of all dead children.
DEAD = "dead"


def _fold(source: str, into: str) -> None:
    """Add every value of the file ``source`` into the file ``into``, then remove ``source``."""
    if not os.path.exists(source):
        return
    target = MmapedDict(into)  # type: ignore[no-untyped-call]
    try:
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(source):  # type: ignore[no-untyped-call]
            total, _ = target.read_value(key)  # type: ignore[no-untyped-call]
            target.write_value(key, total + value, timestamp)  # type: ignore[no-untyped-call]
    finally:
        target.close()  # type: ignore[no-untyped-call]
    os.remove(source)


def _handler(
    registry: CollectorRegistry, credentials: Credentials, client_timeout: float, collecting: threading.Lock
) -> type[BaseHTTPRequestHandler]:
    """``collecting``: held while a scrape reads the files (one store query at a time, too)."""
    throttle = Throttle()

    class Handler(BaseHTTPRequestHandler):
        timeout = client_timeout

        def do_GET(self) -> None:
            client, authorization = self.client_address[0], self.headers.get("Authorization")
            if authorization is not None:
                wait = throttle.retry_after(client, time.time())
                if wait is not None:
                    self.send_response(429)
                    self.send_header("Retry-After", str(max(1, math.ceil(wait))))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            if credentials.principal(authorization) is None:
                if authorization is not None:
                    throttle.failed(client, time.time(), "metrics " + tried(authorization))
                self.send_response(401)
                for challenge in credentials.challenges():
                    self.send_header("WWW-Authenticate", challenge)
                self.end_headers()
                return
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            try:
                with collecting:
                    body = generate_latest(registry)
            except Exception:
                log.exception("collecting metrics failed")
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics: " + format, *args)

    return Handler
