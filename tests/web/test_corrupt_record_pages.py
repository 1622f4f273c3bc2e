"""Every dashboard page answers with a corrupt job record and a corrupt worker registry entry in
a Redis store (issue 26, finding 2): the bad job shows as a CorruptRecord, the bad worker is left
out, the rest is shown."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from web_helpers import AUTH, Client

from conveyor import Conveyor
from conveyor.priority import Fairness
from conveyor.records import WorkerInfo

redis = pytest.importorskip("redis")

from conveyor.brokers.redis.url import parse  # noqa: E402

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_SPECIFIC", "redis://127.0.0.1:6379/11")


@pytest.fixture
def redis_app() -> Iterator[Conveyor]:
    url = f"{REDIS_URL}?prefix=wt-{os.urandom(5).hex()}"
    application = Conveyor(url)
    yield application
    application.close()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{parse(url).prefix}:*"))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


def test_every_page_answers_with_a_corrupt_job_and_worker(redis_app: Conveyor, serve, client: Client) -> None:
    @redis_app.task(name="work", queue="q")
    def work(n: int) -> None: ...

    pending, buried, running = work.enqueue(1), work.enqueue(2), work.enqueue(3)
    prefix = parse(redis_app.broker.display_url).prefix
    jobs = f"{prefix}:{{q}}:jobs"
    raw = redis.Redis.from_url(REDIS_URL)
    try:
        raw.hset(jobs, buried.id, b"\x93\xa4work")  # an array cut short: buried by the reservation
        leased = redis_app.broker.reserve(["q"], 10, 60.0, "w-good", Fairness(redis_app.priorities.weights))
        assert [d.id for d in leased] == [pending.id, running.id]
        raw.hset(jobs, pending.id, b"\xc1 garbage")  # gone bad while leased: shown as it is
        raw.hset(jobs, running.id, b"\x92\x01")
        raw.hset(f"{prefix}:workers", "w-bad", f"{time.time() + 3600!r} {{not json".encode())
    finally:
        raw.close()
    now = time.time()
    worker = WorkerInfo(
        id="w-good", host="h", pid=1, queues=["q"], concurrency=1, in_flight=0, started_at=now,
        last_beat=now, counts={},
    )  # fmt: skip
    redis_app.broker.beat(worker, ttl=3600.0)
    with serve(redis_app) as url:
        pages = [
            "/",
            "/api/overview",
            "/queues/q",
            "/queues/q?state=ready",
            "/queues/q?state=dead",
            "/dead",
            "/scheduled",
            "/workers",
            "/queues/q?state=running",
            f"/jobs/{pending.id}",
            f"/jobs/{buried.id}",
            f"/jobs/{running.id}",
        ]
        for path in pages:
            r = client.get(url + path, headers=AUTH)
            assert r.status_code == 200, (path, r.text[:500])
        for job in (pending, buried, running):
            assert "CorruptRecord" in client.get(url + f"/jobs/{job.id}", headers=AUTH).text
        workers = client.get(url + "/workers", headers=AUTH).text
        assert "w-good" in workers and "w-bad" not in workers
