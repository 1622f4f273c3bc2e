"""Typed arguments between processes: a producer (this test, and the CLI) sends a UUID, a
dataclass holding a datetime, a Decimal and a date to a worker process on SQLite, which gets
them as their annotated types and returns a dataclass that ``job.result()`` rebuilds."""

from __future__ import annotations

import datetime
import decimal
import uuid

import pytest
from harness import Cluster

from conveyor import JobFailed

pytestmark = pytest.mark.slow


def test_typed_arguments_reach_a_worker_process_and_come_back(sqlite_cluster: Cluster) -> None:
    import e2e_app

    start = datetime.datetime(2026, 12, 8, 9, 0, tzinfo=datetime.UTC)
    room = uuid.uuid4()
    job = e2e_app.book.enqueue(room, e2e_app.Slot(start, 45), decimal.Decimal("120.50"))
    keyed = e2e_app.book.options(key="booking-1").enqueue(
        room, e2e_app.Slot(start, 15), decimal.Decimal("9"), day=datetime.date(2026, 12, 8)
    )
    by_cli = sqlite_cluster.cli(
        "enqueue", "e2e_app:app", "book",
        "--args", f'["{room}", {{"start": "2026-12-08T10:00:00Z", "minutes": 30}}, "7.25"]',
        "--kwargs", '{"day": "2026-12-09"}',
    ).stdout.split()[0]  # fmt: skip
    refused = sqlite_cluster.cli(
        "enqueue", "e2e_app:app", "book", "--args", '["not-a-uuid", {}, "1"]', check=False
    )  # fmt: skip
    assert refused.returncode != 0
    assert "argument 'room' does not fit its annotation UUID" in refused.stderr + refused.stdout

    sqlite_cluster.worker(queues=["typed"])
    assert job.result(timeout=60) == e2e_app.Slot(start + datetime.timedelta(minutes=45), 120)
    assert keyed.result(timeout=60) == e2e_app.Slot(start + datetime.timedelta(minutes=15), 9)
    later = sqlite_cluster.app.job(by_cli).result(timeout=60)
    assert later == e2e_app.Slot(datetime.datetime(2026, 12, 8, 10, 30, tzinfo=datetime.UTC), 7)
    assert type(later) is e2e_app.Slot
    with pytest.raises(JobFailed):  # sanity: failures still surface (a Decimal too big for int)
        e2e_app.book.enqueue(room, e2e_app.Slot(start, 1), decimal.Decimal("Infinity")).result(timeout=60)
