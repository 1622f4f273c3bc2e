"""One corrupt entry of the worker registry (written past the broker: garbage bytes, JSON of the
wrong shape) is left out of ``workers()``, so the listing, ``conveyor status`` and the
dashboard's workers page still show the live workers (issue 26, finding 2)."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from conveyor.cli import main
from conveyor.records import WorkerInfo

CORRUPT: dict[str, bytes] = {
    "garbage": b"\xc1\xff not json \x00",
    "truncated": b'{"id": "w-x", "host": "h", "pid": 1, "queues": ["q"',
    "a-list": b"[1, 2, 3]",
    "wrong-types": (
        b'{"id": 5, "host": "h", "pid": "many", "queues": "q", "concurrency": 1, "in_flight": 0,'
        b' "started_at": 0, "last_beat": 0, "counts": {}}'
    ),
    "a-string": b'"w-x"',
    "deep": b"[" * 100_000 + b"]" * 100_000,
}


def _worker(worker_id: str, t0: float) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id, host="h", pid=1, queues=["q"], concurrency=4, in_flight=0, started_at=t0,
        last_beat=t0, counts={},
    )  # fmt: skip


@pytest.mark.parametrize("spoil", sorted(CORRUPT))
def test_a_corrupt_registry_entry_is_left_out_and_the_others_listed(
    backend, broker, store_url, t0, spoil, caplog
):
    assert backend.write_worker is not None
    broker.beat(_worker("w-a", t0), ttl=3600.0)
    if not backend.write_worker(store_url, "w-bad", CORRUPT[spoil], broker.time() + 3600.0):
        pytest.skip(f"{backend.name} cannot hold these bytes in its registry")
    broker.beat(_worker("w-z", t0), ttl=3600.0)

    with caplog.at_level(logging.WARNING, logger="conveyor.store"):
        listed = broker.workers()

    assert [w.id for w in listed] == ["w-a", "w-z"]
    assert "w-bad" in caplog.text
    result = CliRunner().invoke(main, ["status", store_url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
