"""Keeping secrets out of everything shown of a job (dashboard and CLI): payloads, results, errors.

Three rules, applied to everything shown of a job:

1. A value whose argument or dict key name looks secret (password, secret, token, api_key,
   authorization, ...) is replaced by ``***``; positional arguments are named through the
   task's signature when the task is registered.
2. The values removed by rule 1 are also scrubbed from every text of the same job (error
   messages, tracebacks, result), where an exception may have repeated them.
3. URLs with credentials lose their password, and ``name=value`` / ``name: value`` pairs with a
   secret-looking name lose their value.
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

from conveyor.brokers import redact_url

MASK = "***"
SECRET_NAME = re.compile(
    r"passw(or)?d|secret|token|api[_-]?key|authori[sz]ation|credential|private[_-]?key", re.I
)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@\"'<>]*:[^\s/?#@\"'<>]*@[^\s\"'<>]*")
_PAIR = re.compile(
    r"(?P<name>[\w\-]*(?:passw(?:or)?d|secret|token|api[_-]?key|authori[sz]ation|credential)[\w\-]*['\"]?)"
    r"(?P<sep>\s*[=:]\s*)(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;)}\]]+)",
    re.I,
)
#: Shorter values are not scrubbed from free text (they would mangle it); rule 1 still hides them.
MIN_SCRUB = 3


class Redactor:
    """Redacts one job's views; collects the secret values it removes to scrub them from text."""

    def __init__(self) -> None:
        self.found: set[str] = set()

    def harvest(self, value: Any, name: str | None = None) -> None:
        """Remember the secret-named values inside ``value`` so that every text gets scrubbed."""
        if name is not None and SECRET_NAME.search(name):
            self._collect(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.harvest(v, k)
        elif isinstance(value, list):
            for v in value:
                self.harvest(v)

    def value(self, value: Any, name: str | None = None) -> Any:
        """A JSON value with secret-named entries masked and strings cleaned."""
        if name is not None and SECRET_NAME.search(name) and value is not None:
            self._collect(value)
            return MASK
        if isinstance(value, dict):
            return {k: self.value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def _collect(self, value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                self._collect(v)
        elif isinstance(value, list):
            for v in value:
                self._collect(v)
        elif value is not None and not isinstance(value, bool) and len(str(value)) >= MIN_SCRUB:
            self.found.add(str(value))

    def text(self, text: str) -> str:
        """Free text with known secret values, URL passwords and secret pairs masked."""
        for secret in sorted(self.found, key=len, reverse=True):
            text = text.replace(secret, MASK)
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
        return _PAIR.sub(lambda m: f"{m.group('name')}{m.group('sep')}{MASK}", text)

    def arguments(self, payload: bytes, signature: inspect.Signature | None) -> dict[str, Any] | None:
        """The payload ``[args, kwargs]`` as ``{"args": [...], "kwargs": {...}}``, redacted;
        None if it does not decode (it is then never shown, not even in part)."""
        try:
            args, kwargs = json.loads(payload)
        except (ValueError, TypeError):
            return None
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            return None
        names = list(signature.parameters) if signature is not None else []
        named = [(v, names[i] if i < len(names) else None) for i, v in enumerate(args)]
        for v, name in named:
            self.harvest(v, name)
        self.harvest(kwargs)
        return {"args": [self.value(v, name) for v, name in named], "kwargs": self.value(kwargs)}

    def result(self, result: bytes | None) -> str | None:
        """A stored result as pretty JSON, redacted."""
        if result is None:
            return None
        try:
            decoded = json.loads(result)
        except ValueError:
            return self.text(result.decode(errors="replace"))
        return json.dumps(self.value(decoded), indent=2, ensure_ascii=False)

    def error(self, error: dict[str, Any]) -> dict[str, Any]:
        """An attempt's error record with its message and traceback redacted."""
        out = dict(error)
        for field in ("message", "traceback", "type", "worker"):
            if isinstance(out.get(field), str):
                out[field] = self.text(out[field])
        return out
