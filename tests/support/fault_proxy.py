"""A TCP proxy between a client and a server that a test can break on purpose.

Modes (``proxy.mode = ...``), applied to every connection, open or new:

- ``pass``: bytes flow both ways.
- ``latency``: each chunk is held ``proxy.latency`` seconds before it is forwarded.
- ``drop``: open connections are reset (RST) on both sides; new ones are accepted and reset.
- ``blackhole``: nothing is forwarded either way and new connections are accepted but never
  answered, as a partition would look from both ends: no error, no reply. The bytes already
  sent wait in the proxy's socket buffers and flow again once the mode is ``pass``.

- ``mute``: the client's bytes still reach the server, the server's replies are held: a request
  runs, and its reply is lost on the way back (``trip_on(pattern, mute=True)`` arms it).

``trip_on(pattern)`` arms a blackhole that begins right after the first client chunk holding
``pattern`` has been forwarded: the server runs that request, its reply never comes back, and
nothing the client sends after it arrives. ``tripped`` is set then.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

_TICK = 0.01


class FaultProxy:
    """Listens on 127.0.0.1:``port`` and forwards to ``upstream``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.latency = 0.0
        self.tripped = threading.Event()
        self._pattern: bytes | None = None
        self._trip_mode = "blackhole"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    def url_netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    def trip_on(self, pattern: bytes, mute: bool = False) -> None:
        """Blackhole everything once a client chunk holding ``pattern`` has been forwarded; with
        ``mute``, hold only the replies (the rest of the request still reaches the server)."""
        self.tripped.clear()
        self._pattern = pattern
        self._trip_mode = "mute" if mute else "blackhole"

    def reset_connections(self) -> None:
        """Reset every open connection now (both ends), dropping whatever the proxy holds."""
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for s in sockets:
            _reset(s)

    def heal(self) -> None:
        self._pattern = None
        self.mode = "pass"

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            _reset(s)
        self._thread.join(5)

    # -- inside ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.1)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        while self.mode == "blackhole" and not self._closed:
            time.sleep(_TICK)  # accepted, never answered
        if self.mode == "drop" or self._closed:
            _reset(client)
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        self._track(server)
        pair = _Pair(client, server)
        threading.Thread(target=self._pump, args=(pair, client, server, True), daemon=True).start()
        self._pump(pair, server, client, False)

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while not pair.done:
                if self.mode == "drop" or self._closed:
                    pair.reset()
                    return
                if self.mode == "blackhole" or (self.mode == "mute" and not upstream):
                    time.sleep(_TICK)
                    continue
                ready, _, _ = select.select([src], [], [], _TICK * 5)
                muted = self.mode == "mute" and not upstream  # it may have begun during the select
                if not ready or muted or self.mode not in ("pass", "latency", "mute"):
                    continue
                chunk = src.recv(65536)
                if not chunk:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    pair.half_closed()
                    return
                if self.mode == "latency":
                    time.sleep(self.latency)
                pattern = self._pattern
                if upstream and pattern is not None and pattern in chunk:
                    self._pattern = None
                    self.mode = self._trip_mode  # before forwarding: the reply must not get back
                    self.tripped.set()
                dst.sendall(chunk)
        except (OSError, ValueError):  # ValueError: a socket reset under us (fd -1) in select
            pair.reset()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.add(s)


class _Pair:
    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self.a, self.b = a, b
        self.done = False
        self._halves = 0
        self._lock = threading.Lock()

    def half_closed(self) -> None:
        with self._lock:
            self._halves += 1
            if self._halves == 2:
                self.done = True
                self.a.close()
                self.b.close()

    def reset(self) -> None:
        with self._lock:
            if not self.done:
                self.done = True
                _reset(self.a)
                _reset(self.b)


def _reset(s: socket.socket) -> None:
    """Close with an RST, not a FIN: the peer's next read or write fails at once."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.close()


@contextlib.contextmanager
def fault_proxy(upstream_host: str, upstream_port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_host, upstream_port)
    try:
        yield proxy
    finally:
        proxy.close()
