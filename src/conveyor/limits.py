"""Rate and concurrency limits: their declaration, their keys, and the bucket arithmetic.

A task declares :class:`Limit` objects; at enqueue each is rendered into a
:class:`~conveyor.records.Rule` (its key with the call's arguments filled in, and the numbers the
store enforces) carried by the message. The store enforces rules inside ``reserve``; the
arithmetic both SQL stores use is here (Redis does the same in Lua, see lib.lua). Semantics:
docs/flow-control.md.
"""

from __future__ import annotations

import inspect
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.errors import ConfigurationError
from conveyor.records import Rule

#: Longest rendered key, and most limits per task.
MAX_KEY = 255
MAX_LIMITS = 4
#: Largest rate (per second), burst and concurrency a limit may have.
MAX_RATE = 1_000_000.0
MAX_COUNT = 1_000_000
#: Separates a group's keys: no key may contain it (nor any other control character).
SEPARATOR = "\x1f"
#: Throttles (RateLimited) a job may take before it is buried, unless its task says otherwise.
MAX_THROTTLES = 100

_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
          "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_rate(rate: str | float | int) -> float:
    """Starts per second from ``"N/s"``, ``"N/m"``, ``"N/h"``, ``"N/d"``, ``"N/10s"`` or a
    number per second; ConfigurationError if malformed, not positive or over ``MAX_RATE``."""
    if isinstance(rate, bool):
        raise ConfigurationError(f"rate {rate!r}: a number per second or a string like '100/s'")
    if isinstance(rate, int | float):
        per_second = float(rate)
    elif isinstance(rate, str):
        match = _RATE.fullmatch(rate.lower())
        unit = _UNITS.get(match.group(3)) if match else None
        if match is None or unit is None:
            raise ConfigurationError(
                f"rate {rate!r}: write N/s, N/m, N/h or N/d (for instance '100/s' or '30/10m')"
            )
        span = float(match.group(2) or 1) * unit
        per_second = float(match.group(1)) / span if span > 0 else math.inf
    else:
        raise ConfigurationError(f"rate {rate!r}: a number per second or a string like '100/s'")
    if not (0 < per_second <= MAX_RATE):
        raise ConfigurationError(f"rate {rate!r}: must be above 0 and at most {MAX_RATE:g} per second")
    return per_second


def _count(what: str, value: int | None) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise ConfigurationError(f"{what} must be an int from 1 to {MAX_COUNT}, got {value!r}")
    return value


def check_key(key: str) -> str:
    """A rendered (or run-time) key as the store keeps it; ConfigurationError if it is not one."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY or _CONTROL.search(key):
        raise ConfigurationError(f"limit key {key!r:.80}: 1 to {MAX_KEY} characters, no control characters")
    return key


def rule(key: str, rate: str | float | None, burst: int | None, concurrency: int | None) -> Rule:
    """A validated rule: at least one of ``rate`` and ``concurrency``; ``burst`` only with a rate."""
    name = f"limit {key!r}" if key else "the queue's limit"
    if burst is not None and rate is None:
        raise ConfigurationError(f"{name}: a burst needs a rate")
    if rate is None and concurrency is None:
        raise ConfigurationError(f"{name}: give a rate, a concurrency, or both")
    per_second = 0.0 if rate is None else parse_rate(rate)
    return Rule(
        key=key,
        rate=per_second,
        burst=_count(f"{name}: burst", burst) or default_burst(per_second),
        concurrency=_count(f"{name}: concurrency", concurrency),
    )


def default_burst(rate: float) -> int:
    """The burst of a rate given without one: a tenth of a second's worth of starts, at least 1.

    With a burst of 1 every start waits for its own token, so each worker's lateness in waking
    for it (scheduling, its poll, the claim's round trip: milliseconds) is lost for good and a
    backlog uses 89-97 % of the rate. Tokens saved for 0.1 s absorb that lateness (the next
    claim takes the tokens that came due meanwhile), so a backlog uses the whole rate, while a
    window of ``t`` seconds still sees at most ``rate*t + burst``: at most a tenth of a second's
    worth more than ``rate*t``. Rates up to 10/s keep a burst of 1 (their starts evenly spaced).
    """
    if rate <= 0:
        return 1
    return max(1, math.ceil(rate / 10 - 1e-9))


@dataclass(frozen=True)
class Limit:
    """A limit on a task's jobs, declared with ``@app.task(limits=[...])``.

    Args:
        rate: starts allowed per second: ``"100/s"``, ``"30/m"``, ``"1000/h"``, ``"5/10s"`` or a
            number per second. Enforced by the store across every worker.
        burst: starts allowed at once after an idle spell (default: a tenth of a second's worth
            of the rate, at least 1; see :func:`default_burst`).
        concurrency: jobs of the key that may run at once, across every worker.
        key: what the limit counts: a template of the task's parameters such as
            ``"stripe:{account_id}"`` (one limit per rendered value), or None for every call of
            the task (``task:<name>``). Keys are scoped to the job's queue.
    """

    rate: str | float | None = None
    burst: int | None = None
    concurrency: int | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.key is not None:
            check_key(self.key)
        rule(self.key or "task", self.rate, self.burst, self.concurrency)


class Limits:
    """A task's limits, checked against its signature once and rendered per call."""

    def __init__(self, task: str, signature: inspect.Signature, limits: Any) -> None:
        if limits is None:
            limits = ()
        if isinstance(limits, Limit):
            limits = (limits,)
        limits = tuple(limits)
        if not all(isinstance(limit, Limit) for limit in limits):
            raise ConfigurationError(f"task {task!r}: limits must be conveyor.Limit objects")
        if len(limits) > MAX_LIMITS:
            raise ConfigurationError(f"task {task!r}: at most {MAX_LIMITS} limits")
        self._parts: list[tuple[list[tuple[str, str | None]], Rule]] = []
        keys: set[str] = set()
        for limit in limits:
            template = limit.key if limit.key is not None else f"task:{task}"
            parts = _parse_template(task, template, signature)
            if template in keys:
                raise ConfigurationError(f"task {task!r}: two limits with the key {template!r}")
            keys.add(template)
            self._parts.append((parts, rule(template, limit.rate, limit.burst, limit.concurrency)))
        #: Whether rendering needs the call's arguments bound to the signature.
        self.needs_arguments = any(field for parts, _ in self._parts for _, field in parts)
        self._constant = tuple(r for _, r in self._parts)

    def __bool__(self) -> bool:
        return bool(self._parts)

    def render(self, arguments: Mapping[str, Any] | None) -> tuple[Rule, ...]:
        """The rules of one call; ``arguments`` maps parameter names to the call's values
        (defaults applied). ConfigurationError if a key renders too long or to control characters."""
        if not self.needs_arguments:
            return self._constant
        assert arguments is not None
        out = []
        for parts, r in self._parts:
            key = "".join(text if field is None else str(arguments[field]) for text, field in parts)
            out.append(_with_key(r, check_key(key)))
        return tuple(out)


def _with_key(r: Rule, key: str) -> Rule:
    return Rule(key=key, rate=r.rate, burst=r.burst, concurrency=r.concurrency)


def _parse_template(task: str, template: str, signature: inspect.Signature) -> list[tuple[str, str | None]]:
    """A key template as (literal text, None) and (None-text, parameter name) parts."""
    check_key(template)
    parts: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(f"task {task!r}: limit key {template!r}: {exc}") from None
    params = signature.parameters
    for text, field, spec, conversion in parsed:
        if text:
            parts.append((text, None))
        if field is None:
            continue
        if spec or conversion or not field.isidentifier():
            raise ConfigurationError(
                f"task {task!r}: limit key {template!r}: fields are bare parameter names like"
                f" {{account_id}}, not {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}"
            )
        param = params.get(field)
        if param is None or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigurationError(
                f"task {task!r}: limit key {template!r} names {field!r}, which is not a parameter"
                f" of the task ({', '.join(params) or 'it takes none'})"
            )
        parts.append(("", field))
    return parts


def group_of(rules: Sequence[Rule]) -> str | None:
    """A job's group: its limits' keys, or None for a job without limits."""
    if not rules:
        return None
    return SEPARATOR.join(r.key for r in rules)


# -- bucket arithmetic (the generic cell rate algorithm), shared by the SQL stores -------------


def tokens(tat: float, now: float, rate: float, burst: int) -> float:
    """Starts a bucket allows at ``now``: its theoretical arrival time ``tat`` is when it would be
    full-spent-free; each start pushes ``tat`` by ``1/rate`` and a start is allowed while
    ``tat - now < burst/rate`` after it. Unlimited (``math.inf``) without a rate."""
    if rate <= 0:
        return math.inf
    # Times near 1.7e9 s carry float error of ~4e-7 s, which becomes 4e-7 * rate tokens: the
    # margin keeps that error from denying a token that is exactly due (and allows one at most
    # a microsecond early).
    return max(0.0, math.floor(burst - max(0.0, tat - now) * rate + 1e-9 + 1e-6 * rate))


def spend(tat: float, now: float, rate: float, count: int) -> float:
    """The bucket's ``tat`` after ``count`` starts at ``now``."""
    if rate <= 0:
        return tat
    return max(tat, now) + count / rate


def next_token(tat: float, now: float, rate: float, burst: int) -> float:
    """When the bucket allows its next start (``now`` if it does already)."""
    if rate <= 0:
        return now
    return max(now, tat - (burst - 1) / rate)
