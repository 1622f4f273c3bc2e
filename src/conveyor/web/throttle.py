"""Failed authentications per client address, for the dashboard and the worker's /metrics.

After ``limit`` failures within ``window`` seconds from one address, that address is refused
(429 with Retry-After) until the oldest of them leaves the window: at most ``limit`` guesses
per window. IPv6 addresses count per /64 network (one host usually has a whole /64). At most
``max_clients`` addresses are tracked, the least recently failing forgotten first.

This module has no web framework dependency: the worker's metrics endpoint uses it too.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections import OrderedDict, deque

LIMIT = 10
WINDOW = 60.0
MAX_CLIENTS = 10_000

log = logging.getLogger("conveyor.auth")


def client_key(address: str) -> str:
    """What failures are counted under: the address, or its /64 network for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def tried(authorization: str) -> str:
    """What kind of credential a failed ``Authorization`` header tried (never its value)."""
    scheme = authorization.strip().partition(" ")[0].lower()
    return f"{scheme} credentials" if scheme in ("bearer", "basic") else "malformed Authorization header"


class Throttle:
    """Counts failed authentications per client; thread-safe."""

    def __init__(self, limit: int = LIMIT, window: float = WINDOW, max_clients: int = MAX_CLIENTS) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    @property
    def tracked(self) -> int:
        """How many clients have failures remembered."""
        return len(self._failures)

    def retry_after(self, address: str, now: float) -> float | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        with self._lock:
            times = self._failures.get(client_key(address))
            if times is None or len(times) < self.limit:
                return None
            wait = times[0] + self.window - now
            return wait if wait > 0 else None

    def failed(self, address: str, now: float, what: str = "credentials") -> None:
        """Record (and log, without any secret) a failed authentication of ``address``."""
        key = client_key(address)
        with self._lock:
            times = self._failures.pop(key, None) or deque(maxlen=self.limit)
            times.append(now)
            self._failures[key] = times
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
            recent = sum(1 for t in times if t > now - self.window)
        log.warning("authentication failed from %r: %s (%d in %.0f s)", address, what, recent, self.window)
