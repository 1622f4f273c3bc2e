"""Job headers: a small map of strings stored with a job (see docs/hooks.md).

Headers carry what travels with a job besides its arguments: a trace context, a request id, a
tenant. They are bounded so that they stay cheap to store with every job: at most
``MAX_HEADERS`` of them, keys of printable ASCII up to ``MAX_KEY`` characters, values up to
``MAX_VALUE`` characters, ``MAX_BYTES`` bytes in all as stored (JSON). A job without headers
stores nothing for them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

MAX_HEADERS = 32
MAX_KEY = 128
MAX_VALUE = 2048
MAX_BYTES = 4096
_KEY = re.compile(r"^[!-~]{1,128}$")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, str])


def problem(headers: object) -> str | None:
    """Why ``headers`` cannot be stored with a job, or None."""
    if type(headers) is not dict:
        return "headers: a dict of str to str"
    if len(headers) > MAX_HEADERS:
        return f"headers: at most {MAX_HEADERS} of them, got {len(headers)}"
    for k, v in headers.items():
        if type(k) is not str or not _KEY.fullmatch(k):
            return f"headers: key {k!r:.60}: 1-{MAX_KEY} printable ASCII characters, no spaces"
        if type(v) is not str or len(v) > MAX_VALUE:
            return f"headers: {k!r}: the value must be a str of at most {MAX_VALUE} characters"
    size = len(_encoder.encode(headers))
    if size > MAX_BYTES:
        return f"headers: {size} bytes encoded, at most {MAX_BYTES}"
    return None


def normalized(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """``headers`` as a message stores them: a dict, or None for none (an empty map too)."""
    return dict(headers) if headers else None


def encode(headers: dict[str, str] | None) -> str | None:
    """The stored form (JSON text), None for none."""
    return _encoder.encode(headers).decode() if headers else None


def decode(stored: Any) -> dict[str, str] | None:
    """Headers as stored (JSON text or bytes, or a decoded dict); None for none or unreadable."""
    if stored is None or stored in (b"", ""):
        return None
    if isinstance(stored, dict):
        return {str(k): str(v) for k, v in stored.items()} or None
    try:
        return _decoder.decode(stored) or None
    except (msgspec.DecodeError, TypeError):
        return None
