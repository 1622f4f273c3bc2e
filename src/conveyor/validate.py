"""Checks of messages at the store's door, whoever built them.

``task.message()`` builds valid messages; ``Conveyor.enqueue_many`` also takes messages built by
hand (or decoded from elsewhere), and a message the store would keep but no worker could serve
(an unknown priority level, a NaN due time, an empty id) must be refused before it is stored.
Every field is checked for its type as well as its range: a ``msgspec.Struct`` does not check
the types it is built with. A payload is checked for its size, not decoded: one that does not
decode is buried unrun by the worker that reserves it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence

from conveyor import headers as _headers
from conveyor import limits as _limits
from conveyor.errors import ConfigurationError
from conveyor.priority import Priorities
from conveyor.records import Message, Rule

#: Job ids as ``conveyor.ids.new_id`` makes them: 26 Crockford base32 digits.
JOB_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
MAX_KEY_LENGTH = 255
MAX_TASK_NAME = 255
#: Due times and delays beyond a century are mistakes (or attacks), never plans.
MAX_SECONDS = 100 * 365.25 * 86400
MAX_ATTEMPTS = 10_000


class InvalidMessage(ConfigurationError):
    """A message that no worker could serve as stored; nothing of its batch is stored."""


def messages(
    batch: Sequence[Message], priorities: Priorities, max_payload: int, now: float | None = None
) -> None:
    """Raise InvalidMessage, naming the message and the field, unless every message is servable."""
    now = time.time() if now is None else now
    earliest, latest, levels = now - MAX_SECONDS, now + MAX_SECONDS, len(priorities)
    job_id, queue_name, number = JOB_ID.fullmatch, QUEUE_NAME.fullmatch, (int, float)
    #: The same message twice is allowed (its key dedupes it, or the store refuses the id);
    #: one id on two different messages is not.
    seen: dict[str, Message] = {}
    for index, m in enumerate(batch):
        # One expression for the common case; the detailed reason is worked out on failure only.
        # (A NaN fails every comparison, so no isfinite is needed.)
        if not (
            type(m) is Message
            and type(m.id) is str
            and job_id(m.id)
            and seen.get(m.id, m) == m
            and type(m.task) is str
            and 0 < len(m.task) <= MAX_TASK_NAME
            and type(m.queue) is str
            and queue_name(m.queue)
            and type(m.priority) is int
            and 0 <= m.priority < levels
            and type(m.payload) is bytes
            and len(m.payload) <= max_payload
            and type(m.delay) in number
            and 0 <= m.delay <= MAX_SECONDS
            and (m.run_at is None or (type(m.run_at) in number and earliest <= m.run_at <= latest))
            and (m.key is None or (type(m.key) is str and 0 < len(m.key) <= MAX_KEY_LENGTH))
            and type(m.max_attempts) is int
            and 1 <= m.max_attempts <= MAX_ATTEMPTS
            and (m.limits == () or _rules_problem(m.limits) is None)
            and (m.headers is None or _headers.problem(m.headers) is None)
        ):
            if type(m) is not Message:
                raise InvalidMessage(f"message {index}: a conveyor.records.Message, not {type(m).__name__}")
            problem = _problem(m, priorities, max_payload, now) or "id: given to another message of the batch"
            raise InvalidMessage(f"message {index} (id {m.id!r:.40}): {problem}")
        seen[m.id] = m


def _problem(m: Message, priorities: Priorities, max_payload: int, now: float) -> str | None:
    if type(m.id) is not str or not JOB_ID.fullmatch(m.id):
        return "id: 26 characters of Crockford base32, as conveyor.ids.new_id() makes them"
    if type(m.task) is not str or not 0 < len(m.task) <= MAX_TASK_NAME:
        return f"task: a non-empty str of at most {MAX_TASK_NAME} characters"
    if type(m.queue) is not str or not QUEUE_NAME.fullmatch(m.queue):
        return "queue: 1-128 of A-Z a-z 0-9 _ . : -"
    if type(m.priority) is not int or not 0 <= m.priority < len(priorities):
        return f"priority: a level index 0..{len(priorities) - 1} ({', '.join(priorities.names)})"
    if type(m.payload) is not bytes or len(m.payload) > max_payload:
        return f"payload: bytes, at most max_payload ({max_payload})"
    if type(m.delay) not in (int, float) or not 0 <= m.delay <= MAX_SECONDS:
        return f"delay: finite seconds between 0 and {MAX_SECONDS:.0f}"
    if m.run_at is not None and (
        type(m.run_at) not in (int, float)
        or not math.isfinite(m.run_at)
        or not now - MAX_SECONDS <= m.run_at <= now + MAX_SECONDS
    ):
        return "run_at: a Unix time within a century of now"
    if m.key is not None and (type(m.key) is not str or not 0 < len(m.key) <= MAX_KEY_LENGTH):
        return f"key: a non-empty str of at most {MAX_KEY_LENGTH} characters"
    if type(m.max_attempts) is not int or not 1 <= m.max_attempts <= MAX_ATTEMPTS:
        return f"max_attempts: an int between 1 and {MAX_ATTEMPTS}"
    if m.limits != () and (problem := _rules_problem(m.limits)) is not None:
        return problem
    if m.headers is not None:
        return _headers.problem(m.headers)
    return None


def _rules_problem(rules: object) -> str | None:
    """Why a message's limits are not servable, or None."""
    if type(rules) is not tuple or not 0 < len(rules) <= _limits.MAX_LIMITS:
        return f"limits: a tuple of at most {_limits.MAX_LIMITS} conveyor.Rule"
    keys = set()
    for r in rules:
        if type(r) is not Rule:
            return "limits: conveyor.Rule items"
        try:
            _limits.check_key(r.key)
        except ConfigurationError as exc:
            return f"limits: {exc}"
        if r.key in keys:
            return f"limits: the key {r.key!r:.80} twice"
        keys.add(r.key)
        if not (
            type(r.rate) in (int, float)
            and 0 <= r.rate <= _limits.MAX_RATE
            and type(r.burst) is int
            and 1 <= r.burst <= _limits.MAX_COUNT
            and type(r.concurrency) is int
            and 0 <= r.concurrency <= _limits.MAX_COUNT
            and (r.rate > 0 or r.concurrency > 0)
        ):
            return (
                f"limits: {r.key!r:.80}: rate 0..{_limits.MAX_RATE:g} per second, burst and"
                f" concurrency 0..{_limits.MAX_COUNT}, a rate or a concurrency"
            )
    return None
