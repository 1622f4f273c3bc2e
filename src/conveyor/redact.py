"""Keeping secrets out of everything shown of a job (dashboard, CLI, worker logs).

Three rules, applied to everything shown of a job:

1. A value whose argument or dict key name looks secret (password, secret, token, api_key,
   authorization, ...) is replaced by ``***``; positional arguments are named through the
   task's signature when the task is registered.
2. The values removed by rule 1 are also scrubbed from every text of the same job (error
   messages, tracebacks, result), where an exception may have repeated them.
3. URLs with credentials lose their password, and ``name=value`` / ``name: value`` pairs with a
   secret-looking name lose their value (``Authorization: Bearer ***`` keeps the scheme word).

Every rule costs time linear in the text: known values are found by one Aho-Corasick pass, and
rule 3 scans for keywords and ``://`` and looks only a bounded distance around each hit, never
back over text already passed. A stored text longer than ``MAX_INPUT`` is cut before it is
redacted; what is shown is cut again to ``MAX_SHOWN``, well before that first cut, so a secret
split by the first cut is never shown in part.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ahocorasick_rs

from conveyor.records import JobInfo

MASK = "***"
_KEYWORDS = (
    r"passw(?:or)?d|passphrase|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|authori[sz]ation|credential"
)
#: The lookahead lets the engine skip, at C speed, every character that starts no keyword.
SECRET_NAME = re.compile(rf"(?=[pstac])(?:{_KEYWORDS})", re.I)
#: Shorter values are not scrubbed from free text (they would mangle it); rule 1 still hides them.
MIN_SCRUB = 3
#: Longest stored text redacted; the rest is dropped before any rule runs.
MAX_INPUT = 4 << 20
#: Longest text shown of one field; must stay well under MAX_INPUT (see the module docstring).
MAX_SHOWN = 64 << 10
#: Longest quoted value masked as one (a longer quote is masked up to the next separator).
_MAX_QUOTED = 512
#: JSON nesting deeper than this is not walked nor shown (it is hostile or broken).
MAX_DEPTH = 64
TOO_DEEP = f"[nested deeper than {MAX_DEPTH} levels: not shown]"

_WORD_END = re.compile(r"[\w\-]*")
#: An unquoted value runs to a space or a closing bracket, or to ``&`` when the next URL
#: parameter (``&name=``) follows it.
_BARE = r"(?:[^\s,;)}\]&]|&(?![\w.\-]+=))+"
_VALUE = re.compile(
    r"""['"]?[ \t]*[=:][ \t]*"""
    rf"""(?P<value>"[^"\n]{{0,{_MAX_QUOTED}}}"|'[^'\n]{{0,{_MAX_QUOTED}}}'|{_BARE})"""
)
#: After ``Authorization: Bearer`` the credential is the next word.
_AUTH_SCHEMES = frozenset({"bearer", "basic", "digest", "token", "negotiate"})
_CREDENTIAL = re.compile(r"[ \t]+(?P<credential>[^\s,;)}\]]+)")
_AUTHORITY_END = re.compile(r"[\s/?#\"'<>]|$")


#: Characters that move a terminal's cursor, change its colours or reorder text (C0 and C1
#: controls, DEL, Unicode line separators and bidirectional overrides), and lone surrogates,
#: which no stream or store can encode; tab and newline aside.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_CONTROL = re.compile(f"[{_CONTROLS}]")
_CONTROL_OR_NEWLINE = re.compile(f"[{_CONTROLS}\\t\\n]")


def printable(text: str, multiline: bool = False) -> str:
    """``text`` with its control characters written as escapes (``\\x1b``), so stored text cannot
    drive a terminal or forge a log line; newlines and tabs are kept only if ``multiline``."""
    pattern = _CONTROL if multiline else _CONTROL_OR_NEWLINE
    return pattern.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)


def cut(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` shortened to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters not shown]"


def _url_passwords(text: str) -> Iterator[tuple[int, int]]:
    """Spans of the passwords in ``scheme://user:password@host`` URLs of ``text``.

    Each authority is scanned once: it ends at the first ``/``, and every ``://`` holds one.
    """
    pos = text.find("://")
    while pos >= 0:
        start = pos + 3
        end = _AUTHORITY_END.search(text, start)
        stop = end.start() if end is not None else len(text)
        at = text.rfind("@", start, stop)
        if at > start:
            colon = text.find(":", start, at)
            if colon >= 0:
                yield colon + 1, at
        pos = text.find("://", stop)


def _pair_values(text: str) -> Iterator[tuple[int, int]]:
    """Spans of the values of ``secret-name = value`` pairs of ``text``, left to right."""
    pos = 0
    while (hit := SECRET_NAME.search(text, pos)) is not None:
        name_end = _WORD_END.match(text, hit.end())
        assert name_end is not None  # [\w\-]* matches the empty string
        after = _VALUE.match(text, name_end.end())
        if after is None:
            pos = name_end.end()
            continue
        start, end = after.span("value")
        if after.group("value").lower() in _AUTH_SCHEMES:
            credential = _CREDENTIAL.match(text, end)
            if credential is not None:
                start, end = credential.span("credential")
        yield start, end
        pos = end


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each of the (sorted, possibly overlapping) ``spans`` replaced by MASK."""
    if not spans:
        return text
    spans.sort()
    out: list[str] = []
    done = 0
    for start, end in spans:
        if end <= done:
            continue
        if start >= done:
            out.append(text[done:start])
            out.append(MASK)
        done = end
    out.append(text[done:])
    return "".join(out)


class Redactor:
    """Redacts one job's views; collects the secret values it removes to scrub them from text."""

    def __init__(self) -> None:
        self.found: set[str] = set()
        self._automaton: ahocorasick_rs.AhoCorasick | None = None
        self._patterns: list[str] = []

    def harvest(self, value: Any, name: str | None = None, depth: int = 0) -> None:
        """Remember the secret-named values inside ``value`` so that every text gets scrubbed."""
        if depth > MAX_DEPTH:
            return
        if name is not None and SECRET_NAME.search(name):
            self._collect(value, depth)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.harvest(v, k, depth + 1)
        elif isinstance(value, list):
            for v in value:
                self.harvest(v, None, depth + 1)

    def value(self, value: Any, name: str | None = None, depth: int = 0) -> Any:
        """A JSON value with secret-named entries masked and strings cleaned."""
        if name is not None and SECRET_NAME.search(name) and value is not None:
            self._collect(value, depth)
            return MASK
        if depth > MAX_DEPTH and isinstance(value, dict | list):
            return TOO_DEEP
        if isinstance(value, dict):
            return {self.text(k): self.value(v, k, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, None, depth + 1) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def _collect(self, value: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        if isinstance(value, dict):
            for v in value.values():
                self._collect(v, depth + 1)
        elif isinstance(value, list):
            for v in value:
                self._collect(v, depth + 1)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            text = value if isinstance(value, str) else repr(value)
            if len(text) >= MIN_SCRUB:
                self.found.add(text[:MAX_INPUT])

    def _known(self, text: str) -> list[tuple[int, int]]:
        if not self.found:
            return []
        if self._automaton is None or len(self._patterns) != len(self.found):
            self._patterns = sorted(self.found)
            self._automaton = ahocorasick_rs.AhoCorasick(
                self._patterns, matchkind=ahocorasick_rs.MatchKind.LeftmostLongest
            )
        return [(start, end) for _, start, end in self._automaton.find_matches_as_indexes(text)]

    def text(self, text: str, limit: int = MAX_SHOWN) -> str:
        """Free text with known secret values, URL passwords and secret pairs masked, cut to
        ``limit`` characters."""
        text = text[:MAX_INPUT]
        spans = self._known(text)
        spans.extend(_url_passwords(text))
        spans.extend(_pair_values(text))
        return cut(_masked(text, spans), limit)

    def line(self, text: str, limit: int = MAX_SHOWN) -> str:
        """:meth:`text` made one printable line, for a log or a listing."""
        return printable(self.text(text, limit))

    def arguments(self, payload: bytes, signature: inspect.Signature | None) -> dict[str, Any] | None:
        """The payload ``[args, kwargs]`` (or ``[args, kwargs, typed]``, typed arguments shown
        in their JSON form) as ``{"args": [...], "kwargs": {...}}``, redacted; None if it does
        not decode (it is then never shown, not even in part)."""
        decoded = _loads(payload)
        if not isinstance(decoded, list) or len(decoded) not in (2, 3):
            return None
        args, kwargs = decoded[0], decoded[1]
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
        decoded = _loads(result)
        if decoded is _UNDECODABLE:
            return self.text(result[:MAX_INPUT].decode(errors="replace"))
        return self.text(json.dumps(self.value(decoded), indent=2, ensure_ascii=False))

    def error(self, error: dict[str, Any]) -> dict[str, Any]:
        """An attempt's error record with its message and traceback redacted."""
        out = dict(error)
        for field in ("message", "traceback", "type", "worker"):
            if isinstance(out.get(field), str):
                out[field] = self.text(out[field])
        return out


_UNDECODABLE = object()


def _loads(data: bytes) -> Any:
    """Stored JSON decoded, or ``_UNDECODABLE`` (bad bytes, too deep, too large a number)."""
    if len(data) > MAX_INPUT:
        return _UNDECODABLE
    try:
        return json.loads(data)
    except (ValueError, TypeError, RecursionError):
        return _UNDECODABLE


@dataclass(frozen=True)
class RedactedJob:
    """What may be shown of one job: every text masked by the same redactor, and cut."""

    #: ``{"args": [...], "kwargs": {...}}``, or None when the payload does not decode.
    arguments: dict[str, Any] | None
    errors: list[dict[str, Any]]
    result: str | None
    key: str | None
    #: The job's headers, secret-named ones masked (None: none).
    headers: dict[str, Any] | None = None


def redact_job(info: JobInfo, signature: inspect.Signature | None) -> RedactedJob:
    """One job's arguments, errors, result and key as they may be shown.

    Costs time linear in the job's stored size: run it off an event loop all the same.
    """
    redactor = Redactor()
    arguments = redactor.arguments(info.payload, signature)
    headers = None if not info.headers else redactor.value(dict(info.headers))
    errors = [
        redactor.error(e) if isinstance(e, dict) else {"message": redactor.text(str(e))} for e in info.errors
    ]
    return RedactedJob(
        arguments=arguments,
        errors=errors,
        result=redactor.result(info.result),
        key=None if info.key is None else redactor.text(info.key),
        headers=headers,
    )
