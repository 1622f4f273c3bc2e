"""Load the named statements of ``queries.sql`` for one schema."""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

#: The caller's ``now`` if it passed one, else the database's transaction time.
NOW = "coalesce(%(now)s::float8, extract(epoch from now()))"
#: As NOW, but the start of the current statement: in a caller's transaction, the enqueue itself.
STATEMENT_NOW = "coalesce(%(now)s::float8, extract(epoch from statement_timestamp()))"
#: What ``get`` and ``jobs`` read of a job, in the order ``JobInfo`` is built from.
COLUMNS = (
    "id, task, queue, priority, state, payload, attempt, max_attempts, run_at, enqueued_at, "
    "started_at, finished_at, key, result, errors, worker, lease_until, "
    "(state = 'running' AND cancel_token IS NOT DISTINCT FROM token)"
)
_HEADER = re.compile(r"^-- name: (\w+)\n", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Statements by name: each runs from its ``-- name:`` line to the next one."""
    pieces = _HEADER.split(text)[1:]
    return {name: body.strip() for name, body in zip(pieces[::2], pieces[1::2], strict=True)}


def load(schema_ident: str) -> Mapping[str, str]:
    """The statements with ``{schema}``, ``{now}``, ``{statement_now}`` and ``{columns}`` filled in."""
    text = resources.files("conveyor.brokers.postgres").joinpath("queries.sql").read_text(encoding="utf-8")
    return {
        name: sql.replace("{schema}", schema_ident)
        .replace("{now}", NOW)
        .replace("{statement_now}", STATEMENT_NOW)
        .replace("{columns}", COLUMNS)
        for name, sql in parse(text).items()
    }
