"""Helpers of the examples' tests: where the examples are, the test database, a free port."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import httpx

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving(base: str, path: str = "/") -> Callable[[], bool]:
    """A condition: the web server at ``base`` answers ``path`` (any status)."""

    def answers() -> bool:
        try:
            httpx.get(base + path, timeout=2)
        except httpx.TransportError:
            return False
        return True

    return answers
