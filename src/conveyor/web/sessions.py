"""The dashboard's login sessions: signed cookies with a random id, revoked on logout.

A cookie is ``EXPIRES.ID.MAC``: ``ID`` is random (two logins in the same second differ), ``MAC``
an HMAC of ``EXPIRES.ID`` under a key derived from the dashboard token and a random salt drawn at
start-up. Nothing is stored per live session; logging out adds the id to a revocation set, where
it stays until the session would have expired anyway. The salt makes every session end with the
process, so a restart can never bring a revoked session back, and a session is valid only on the
process that made it (several dashboard processes behind a balancer need sticky sessions, or
bearer/Basic authentication). When the revocation set is full, the salt is drawn again: every
session ends rather than one revocation being forgotten.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading

from conveyor.web.credentials import same

SESSION_SECONDS = 12 * 3600
MAX_REVOKED = 10_000
_COOKIE = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([0-9a-f]{64})")

log = logging.getLogger("conveyor.dashboard")


class Sessions:
    """Session cookies for one dashboard process."""

    def __init__(self, token: str, seconds: int = SESSION_SECONDS, max_revoked: int = MAX_REVOKED) -> None:
        self.seconds = seconds
        self._secret = hmac.digest(token.encode(), b"conveyor-session", "sha256")
        self._max_revoked = max_revoked
        self._lock = threading.Lock()
        self._revoked: dict[str, int] = {}  # id -> expiry; only ids whose MAC was valid
        self._key = self._new_key()

    def _new_key(self) -> bytes:
        return hmac.digest(self._secret, secrets.token_bytes(32), "sha256")

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    @property
    def revoked(self) -> int:
        """How many revoked sessions are remembered."""
        return len(self._revoked)

    def new(self, now: float) -> str:
        """A new session's cookie value."""
        body = f"{int(now) + self.seconds}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac(body)}"

    def check(self, cookie: str | None, now: float) -> str | None:
        """The session id of a valid, unexpired, unrevoked cookie, else None."""
        match = _COOKIE.fullmatch(cookie or "")
        if match is None:
            return None
        expires, sid, mac = match.groups()
        if int(expires) < now or not same(mac, self._mac(f"{expires}.{sid}")):
            return None
        with self._lock:
            return None if sid in self._revoked else sid

    def revoke(self, cookie: str | None, now: float) -> None:
        """End the session of ``cookie`` (no-op for an invalid one)."""
        sid = self.check(cookie, now)
        if sid is None:
            return
        assert cookie is not None
        expires = int(cookie.partition(".")[0])
        with self._lock:
            self._revoked = {s: e for s, e in self._revoked.items() if e >= now}
            if len(self._revoked) >= self._max_revoked:
                log.warning(
                    "%d sessions revoked in %d s: ending every session", len(self._revoked), self.seconds
                )
                self._revoked.clear()
                self._key = self._new_key()
                return
            self._revoked[sid] = expires
