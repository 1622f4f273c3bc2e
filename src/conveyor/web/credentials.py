"""Who may read the dashboard and the metrics: a token and/or a user and password from the environment.

This module has no web framework dependency: the worker's metrics endpoint uses it too.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from conveyor.errors import ConfigurationError

TOKEN_ENV = "CONVEYOR_DASHBOARD_TOKEN"
USER_ENV = "CONVEYOR_DASHBOARD_USER"
PASSWORD_ENV = "CONVEYOR_DASHBOARD_PASSWORD"
METRICS_TOKEN_ENV = "CONVEYOR_METRICS_TOKEN"


def same(given: str, expected: str) -> bool:
    """Constant-time string comparison (any characters)."""
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Credentials:
    """Accepted credentials: a bearer token, HTTP Basic user and password, or both."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, metrics: bool = False) -> Credentials:
        """Read ``CONVEYOR_DASHBOARD_TOKEN``, ``CONVEYOR_DASHBOARD_USER`` and ``..._PASSWORD``.

        Args:
            metrics: for a metrics endpoint, where ``CONVEYOR_METRICS_TOKEN`` takes precedence
                over the dashboard token.
        """
        env = os.environ if env is None else env
        token = (env.get(METRICS_TOKEN_ENV) if metrics else None) or env.get(TOKEN_ENV) or None
        user, password = env.get(USER_ENV) or None, env.get(PASSWORD_ENV) or None
        if (user is None) != (password is None):
            raise ConfigurationError(f"set both {USER_ENV} and {PASSWORD_ENV}, or neither")
        return cls(token, user, password)

    @property
    def configured(self) -> bool:
        """Whether any credential is set."""
        return self.token is not None or self.user is not None

    def check_token(self, token: str) -> bool:
        """Whether ``token`` is the configured token (constant-time comparison)."""
        return self.token is not None and same(token, self.token)

    def principal(self, authorization: str | None) -> str | None:
        """``"bearer"`` or ``"basic:USER"`` for a valid ``Authorization`` header, else None."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.check_token(value.strip()):
            return "bearer"
        if scheme == "basic" and self.user is not None and self.password is not None:
            try:
                user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            user_ok = same(user, self.user)
            password_ok = same(password, self.password)
            if sep and user_ok and password_ok:
                return f"basic:{user}"
        return None

    def challenges(self) -> list[str]:
        """``WWW-Authenticate`` values for a 401 response."""
        out = []
        if self.user is not None:
            out.append('Basic realm="Conveyor", charset="UTF-8"')
        if self.token is not None:
            out.append('Bearer realm="Conveyor"')
        return out
