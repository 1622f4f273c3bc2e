"""Job control on SQLite (docs/job-control.md): cancel requests for running jobs, and the
``cancelled`` and ``snoozed`` outcomes. Every function runs in the caller's write transaction.

A cancel request names the run it was made for (``cancel_token``, the token of the lease held
then): it needs no clearing when the job leaves running, since no later claim has that token.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, NamedTuple

from conveyor import serializer
from conveyor.brokers.base import Lease, as_int
from conveyor.records import AckStatus, CancelAnswer, Outcome

#: Outcomes that let a job run again; one of a job with a cancel request ends it instead.
RETURNING_KINDS = frozenset({"retry", "throttled", "snoozed"})

_APPEND_ERROR = (
    "errors = CASE WHEN :error IS NULL THEN errors ELSE json_insert(CASE WHEN json_valid(errors)"
    " AND json_type(errors) = 'array' THEN errors ELSE json_array(json_object('type', 'CorruptRecord',"
    " 'message', quote(errors))) END, '$[#]', json(:error)) END"
)
_OWNED = "WHERE id = :id AND token = :token AND state = 'running' RETURNING queue, priority, grp, held"


class Settled(NamedTuple):
    """An outcome applied here: its status, the row that left running (queue, priority, grp,
    held) and whether the job is pending again."""

    status: AckStatus
    row: Sequence[Any] | None
    requeued: bool


def channel(worker: str) -> str:
    """The wake-up listener name of ``worker``'s cancel requests: no queue is named so (a queue
    name has no "!")."""
    return "!" + worker


def request_cancel(
    db: sqlite3.Connection, job_id: str, grace: float, now: float, retention: float
) -> tuple[CancelAnswer, str | None]:
    """What the request found and did, and the worker to wake (None: none)."""
    row = db.execute("SELECT state, worker FROM conveyor_jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return "missing", None
    state, worker = row
    if state in ("pending", "parked"):
        db.execute(
            "UPDATE conveyor_jobs SET state = 'cancelled', finished_at = ?, expires_at = ? WHERE id = ?",
            (now, now + retention, job_id),
        )
        return "cancelled", None
    if state != "running":
        return "finished", None
    db.execute(
        "UPDATE conveyor_jobs SET cancel_token = token, cancel_grace = ?"
        " WHERE id = ? AND cancel_token IS NOT token",
        (grace, job_id),
    )
    return "cancelling", None if worker is None else str(worker)


def cancelling(db: sqlite3.Connection, leases: Sequence[Lease]) -> dict[str, float]:
    """Of ``leases``, those held whose run has a cancel request, with its grace."""
    out: dict[str, float] = {}
    for job_id, token in leases:
        row = db.execute(
            "SELECT cancel_grace FROM conveyor_jobs WHERE id = ? AND token = ? AND state = 'running'"
            " AND cancel_token = token",
            (job_id, token),
        ).fetchone()
        if row is not None:
            out[job_id] = float(row[0]) if isinstance(row[0], int | float) else 0.0
    return out


def settle(db: sqlite3.Connection, o: Outcome, now: float, retention: float) -> Settled | None:
    """Apply a ``cancelled`` or returning outcome; None for a returning one (retry, throttled) of
    a run without a cancel request, which the caller applies as usual."""
    mark = db.execute(
        "SELECT cancel_token = token, snoozes FROM conveyor_jobs"
        " WHERE id = ? AND token = ? AND state = 'running'",
        (o.id, o.token),
    ).fetchone()
    if mark is None:
        return Settled(AckStatus("lost"), None, False)
    error = None if o.error is None or o.kind == "snoozed" else serializer.dumps(o.error).decode()
    params: dict[str, Any] = {"id": o.id, "token": o.token, "now": now, "error": error}
    if o.kind == "cancelled" or mark[0]:
        row = db.execute(
            "UPDATE conveyor_jobs SET state = 'cancelled', finished_at = :now, expires_at = :expires,"
            f" lease_until = NULL, {_APPEND_ERROR} {_OWNED}",
            params | {"expires": now + retention},
        ).fetchone()
        return Settled(AckStatus("ok"), row, False)
    if o.kind != "snoozed":
        return None
    if as_int(mark[1]) >= o.max_snoozes:
        params["error"] = None if o.error is None else serializer.dumps(o.error).decode()
        row = db.execute(
            f"UPDATE conveyor_jobs SET state = 'dead', finished_at = :now, lease_until = NULL, {_APPEND_ERROR}"
            f" {_OWNED}",
            params,
        ).fetchone()
        return Settled(AckStatus("ok"), row, False)
    row = db.execute(
        "UPDATE conveyor_jobs SET state = 'pending', run_at = :due, lease_until = NULL, worker = NULL,"
        f" attempt = attempt - 1, snoozes = snoozes + 1 {_OWNED}",
        params | {"due": now + o.delay},
    ).fetchone()
    return Settled(AckStatus("ok"), row, True)
