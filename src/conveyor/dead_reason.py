"""Why a dead job gave up, in words, for ``conveyor dead show`` and the dashboard's job page."""

from __future__ import annotations

from conveyor.records import JobInfo
from conveyor.redact import printable


def gave_up(info: JobInfo) -> str | None:
    """Why ``info`` is in the dead letter queue, or None if it is not dead.

    The worker that buried it says why in its last error record (``gave_up``: attempts spent,
    give_up_on matched, not in retry_on, max_throttles reached, an unknown task, a payload or a
    return value that cannot be used); records written before it did, and jobs the store buried
    (a worker lost on the last attempt), are explained from the record's type and the attempts.
    """
    if info.state != "dead":
        return None
    last = info.errors[-1] if info.errors and isinstance(info.errors[-1], dict) else {}
    said = last.get("gave_up")
    if isinstance(said, str) and said:
        return printable(said)[:500]
    kind = last.get("type")
    spent = f"{info.attempt}/{info.max_attempts}"
    if kind == "WorkerLost":
        return f"worker lost: the lease of its last attempt ({spent}) expired while it ran"
    if kind == "UnknownTask":
        return "the task is not registered in the worker that took it"
    if kind == "MalformedPayload":
        return "the payload does not decode: no attempt can run it"
    if kind == "CorruptRecord":
        return "its stored record is corrupt"
    if info.attempt >= info.max_attempts:
        return f"attempts spent ({spent})"
    if kind is None:
        return "no error recorded"
    return (
        f"{printable(str(kind))[:200]} was not retried (the task's give_up_on or retry_on), attempt {spent}"
    )
