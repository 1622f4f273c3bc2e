"""How broker calls cross to the scripts and back: arguments out, reply fields in."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from conveyor import headers as stored_headers
from conveyor import limits, serializer
from conveyor import progress as stored_progress
from conveyor.brokers.base import CORRUPT_TASK, Lease, corrupt_error, duplicate_id, errors_of
from conveyor.errors import ConfigurationError, KeyConflict
from conveyor.records import Delivery, JobInfo, LimitInfo, Message, Outcome, Rule, State

#: Reply fields per job (see ``emit`` in lib.lua), and per leased job (``emit_delivery``).
FIELDS = 20
DELIVERY_FIELDS = 12
_packer = msgspec.msgpack.Encoder()
STATES: dict[bytes, State] = {b"r": "running", b"s": "succeeded", b"d": "dead", b"c": "cancelled"}


def now_arg(now: float | None) -> str:
    """``now`` for a script: '' lets the script read the store's clock."""
    return "" if now is None else repr(float(now))


def optional(value: str | bytes | None) -> bytes:
    """An optional string for a script: b'' for None, else b'=' and the value."""
    if value is None:
        return b""
    return b"=" + (value.encode() if isinstance(value, str) else value)


def packed_messages(messages: Sequence[Message]) -> list[Any]:
    """Messages as ``read_messages`` in lib.lua reads them: one MessagePack array of [shapes,
    runs, ids, keys], then each payload as an argument of its own (Redis' cmsgpack has no binary
    type, and payloads are any bytes). A shape is what a batch's messages mostly share: [task,
    priority, delay, run_at, max_attempts]; runs are [count, shape index] pairs in order, and
    keys maps a message's (1-based) index to its idempotency key. A batch with limits adds its
    distinct rule sets (each a list of [key, rate, burst, concurrency]) and a map of a message's
    index to its rule set's (1-based); a batch with headers, a map of a message's index to its
    headers (JSON text) after those two (None, None without limits)."""
    shapes: dict[tuple[str, int, float, float | None, int], int] = {}
    runs: list[int] = []
    ids: list[str] = []
    keys: dict[int, str] = {}
    rule_sets: dict[tuple[Rule, ...], int] = {}
    limited: dict[int, int] = {}
    with_headers: dict[int, str] = {}
    last = 0
    for n, m in enumerate(messages, 1):
        if m.headers:
            with_headers[n] = stored_headers.encode(m.headers) or ""
        if m.limits:
            limited[n] = rule_sets.setdefault(m.limits, len(rule_sets) + 1)
        shape = (m.task, m.priority, float(m.delay), m.run_at, m.max_attempts)
        index = shapes.setdefault(shape, len(shapes) + 1)
        if index == last:
            runs[-2] += 1
        else:
            runs += (1, index)
            last = index
        ids.append(m.id)
        if m.key is not None:
            keys[n] = m.key
    packed: list[Any] = [list(shapes), runs, ids, keys or None]
    if limited:
        packed += [list(rule_sets), limited]
    if with_headers:
        packed += [*([None, None] if not limited else []), with_headers]
    return [_packer.encode(packed), *(m.payload for m in messages)]


def lua_string(value: bytes | str) -> msgspec.Raw | str:
    """Any bytes as a MessagePack str, which Lua reads as the same bytes (Redis' cmsgpack reads
    no bin type; a Lua string is any bytes, so only a Python reader would mind non-UTF-8)."""
    if isinstance(value, str):
        return value
    n = len(value)
    if n < 32:
        head = bytes((0xA0 | n,))
    elif n < 0x100:
        head = b"\xd9" + n.to_bytes(1, "big")
    elif n < 0x10000:
        head = b"\xda" + n.to_bytes(2, "big")
    else:
        head = b"\xdb" + n.to_bytes(4, "big")
    return msgspec.Raw(head + value)


def command_arg(value: Any) -> msgspec.Raw | str:
    """An effect's argument: bytes and str as they are, floats exactly, the rest by str()."""
    if isinstance(value, bytes | str):
        return lua_string(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def outcome_entry(o: Outcome, follow_targets: list[int]) -> list[Any]:
    """An outcome as ack.lua reads it from its packed list: id, token, kind, result (optional
    string), delay, error JSON, effects (each a list of command and arguments), and the queue
    index of each follow-up enqueue (the messages themselves travel packed after the list).
    A plain success, the common outcome, is only its id and token."""
    if o.kind == "succeeded" and o.result is None and not o.effects and not follow_targets:
        return [o.id, o.token]
    effects = o.effects if o.kind == "succeeded" else ()
    commands = []
    for effect in effects:
        command, *rest = effect
        params = list(rest[0]) if rest and isinstance(rest[0], list | tuple) else rest
        commands.append([command_arg(command), *(command_arg(p) for p in params)])
    return [
        o.id,
        o.token,
        o.kind,
        lua_string(optional(o.result)),
        float(o.delay),
        lua_string(serializer.dumps(o.error) if o.kind != "succeeded" else b""),
        commands,
        follow_targets,
        o.max_snoozes,
    ]


def packed_outcomes(entries: list[list[Any]]) -> bytes:
    return _packer.encode(entries)


def pairs(leases: Sequence[Lease]) -> list[Any]:
    return [x for job_id, token in leases for x in (job_id, token)]


def adopt_fields(f: list[Any]) -> list[Any]:
    """A dead job's row (see ``emit``) as ``adopt`` takes it: its token and order travel along,
    so a token handed out before the replay stays stale."""
    return [f[0], f[1], f[2], f[4], f[12], f[6], f[14], f[9], f[7], f[17], f[18]]


def raise_conflict(reply: list[Any]) -> None:
    """Raise the refusal an enqueue script answered with, if any (it stored nothing then)."""
    if reply[0] == b"conflict":
        key, holder = reply[1].decode(errors="replace"), reply[2].decode(errors="replace")
        raise KeyConflict(f"key {key!r} belongs to job {holder} with a different task or payload")
    if reply[0] == b"duplicate":
        raise duplicate_id(reply[1].decode(errors="replace"))


def rows(reply: list[Any], start: int, width: int = FIELDS) -> Iterator[list[Any]]:
    for i in range(start, len(reply), width):
        yield reply[i : i + width]


def float_or_none(raw: bytes) -> float | None:
    return float(raw) if raw else None


def text_or_none(raw: bytes) -> str | None:
    return raw[1:].decode(errors="replace") if raw else None


# CORRUPT_TASK (see base) is the task name a delivery gets when its stored record does not
# parse: the worker buries the job (that job only) at once, its record kept as it is.


def delivery(f: list[Any], queue: str) -> Delivery:
    """A leased job from the reserve script's fields (``emit_delivery`` in lib.lua); a record that
    does not parse becomes a delivery of CORRUPT_TASK, so it costs only itself."""
    try:
        return _delivery(f, queue)
    except (ValueError, TypeError, IndexError, AttributeError):
        token = f[6] if len(f) > 6 and type(f[6]) is int else 0
        job_id = f[0].decode(errors="replace") if f and isinstance(f[0], bytes) else "?"
        return Delivery(
            id=job_id, task=CORRUPT_TASK, queue=queue, priority=0, payload=b"", attempt=1,
            max_attempts=1, token=token, run_at=0.0, enqueued_at=0.0,
        )  # fmt: skip


def _delivery(f: list[Any], queue: str) -> Delivery:
    run_at = float(f[7])
    return Delivery(
        id=f[0].decode(),
        task=f[1].decode(errors="replace"),
        queue=queue,
        priority=_int(f[2]),
        payload=_bytes(f[3]),
        attempt=_int(f[4]),
        max_attempts=_int(f[5]),
        token=_int(f[6]),
        run_at=run_at,
        enqueued_at=float(f[8]) if f[8] else run_at,
        key=text_or_none(f[9]),
        throttled=int(f[10]),
        headers=stored_headers.decode(f[11][1:]) if f[11] else None,
    )


def _int(value: Any) -> int:
    """A reply field that must be an integer (a record's number, as Redis returns it)."""
    if type(value) is int:
        return value
    if isinstance(value, bytes):
        return int(value)  # ValueError for anything but digits: the record is corrupt
    raise TypeError(f"expected an integer, got {type(value).__name__}")


def _bytes(value: Any) -> bytes:
    """A reply field that must be a string; never ``bytes(n)`` of a number (n zero bytes)."""
    if isinstance(value, bytes):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def job(f: list[Any], queue: str, now: float) -> JobInfo:
    """A job record from a listing script's fields; one that does not parse is shown as such."""
    try:
        return _job(f, queue, now)
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        job_id = f[0].decode(errors="replace") if f and isinstance(f[0], bytes) else "?"
        return JobInfo(
            id=job_id, task=CORRUPT_TASK, queue=queue, priority=0, state="dead", payload=b"",
            attempt=0, max_attempts=0, run_at=0.0, enqueued_at=0.0, started_at=None,
            finished_at=None, key=None, result=None, worker=None, lease_until=None,
            errors=[corrupt_error(f"stored record does not parse: {exc}")],
        )  # fmt: skip


def _job(f: list[Any], queue: str, now: float) -> JobInfo:
    run_at = float(f[8])
    state = STATES.get(f[3]) or ("ready" if run_at <= now else "scheduled")
    return JobInfo(
        id=f[0].decode(errors="replace"),
        task=f[1].decode(errors="replace"),
        queue=queue,
        priority=_int(f[2]),
        state=state,
        payload=_bytes(f[4]),
        attempt=_int(f[5]),
        max_attempts=_int(f[6]),
        run_at=run_at,
        enqueued_at=float(f[9]),
        started_at=float_or_none(f[10]),
        finished_at=float_or_none(f[11]),
        key=text_or_none(f[12]),
        result=f[13][1:] if f[13] else None,
        errors=errors_of(f[14]),
        worker=text_or_none(f[15]),
        lease_until=float_or_none(f[16]),
        headers=stored_headers.decode(f[18][1:]) if f[18] else None,
        progress=stored_progress.decode(f[19][1:]) if f[19] else None,
    )


#: Reply fields per limit key (see limits.lua).
LIMIT_FIELDS = 8


def rule_arg(queue: str, rule: Rule) -> str:
    """A run-time rule as limit.lua stores it ("rate burst concurrency"); ConfigurationError,
    naming the queue, unless it is a rule a limit may have."""
    if type(rule) is not Rule:
        raise ConfigurationError(f"limit of queue {queue!r}: a conveyor.Rule, not {type(rule).__name__}")
    try:
        if rule.key != "":
            limits.check_key(rule.key)
        checked = limits.rule(
            rule.key,
            rule.rate if rule.rate else None,
            rule.burst if rule.rate else None,
            rule.concurrency if rule.concurrency else None,
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"limit of queue {queue!r}: {exc}") from None
    return f"{checked.rate!r} {checked.burst} {checked.concurrency}"


def limit_info(f: list[Any], queue: str) -> LimitInfo:
    """A limit key from the limits script's fields."""
    return LimitInfo(
        queue=queue,
        key=f[0].decode(errors="replace"),
        rate=float(f[1]),
        burst=int(f[2]),
        concurrency=int(f[3]),
        override=f[4] == b"1",
        running=int(f[5]),
        tokens=float(f[6]) if f[6] else None,
        closed_until=float(f[7]) if f[7] else None,
    )
