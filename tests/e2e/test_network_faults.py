"""Network faults between a worker and its store: a fault proxy (tests/support/fault_proxy.py)
sits between worker A and the store and blackholes the connection in the middle of a
reservation, of an acknowledgement with effects, or of a heartbeat: the request reaches the
store, its reply never comes back, and nothing more gets through either way. Worker B, connected
directly, must then finish A's jobs: each ends exactly once in the ledger (the tasks' effects),
and the jobs A held when the blackhole began are done within

    BOUND = lease + server timeout + 2 x reclaim interval + task time + slack

(PostgreSQL: the blackholed session's open transaction holds its job's row lock until the
server's idle_in_transaction_session_timeout ends it, as reclaim skips locked rows; Redis runs
each script whole, so nothing stays locked). A rides out the outage on its own timeouts and
stays up; its late outcomes are refused by their fencing tokens.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_proxy import FaultProxy, fault_proxy
from harness import Cluster, cluster_of, wait_for
from stores import STORES

pytestmark = pytest.mark.slow

TASKS = 40
#: Task n sleeps SLEEP x (1 + n mod 4): runs end apart, so A's first ack leaves it others.
SLEEP = 0.15
LEASE, HEARTBEAT, RECLAIM = 2.0, 0.4, 0.4
#: The timeouts in worker A's URL: the server's (PostgreSQL) and the client's.
SERVER_TIMEOUT = 1.0
BOUND = LEASE + SERVER_TIMEOUT + 2 * RECLAIM + 4 * SLEEP + 2.0
CONFIG = {"lease": LEASE, "heartbeat": HEARTBEAT, "reclaim_interval": RECLAIM, "concurrency": 4}

#: Client bytes of each request, sent when a connection first runs it (PostgreSQL sends a
#: statement's text until it is prepared) or on every call (Redis: the script's sha).
PATTERNS = {
    ("postgres", "reserve"): b".reserve_unpaused(",
    ("postgres", "ack"): b".ledger (n)",  # the task's effect, inside the ack's transaction
    ("postgres", "heartbeat"): b"SET lease_until = ",
}


def _redis_pattern(fault: str) -> bytes:
    from conveyor.brokers.redis.scripts import Scripts

    name = {"reserve": "reserve", "ack": "ack", "heartbeat": "extend"}[fault]
    return Scripts().sha[name].encode()


def proxied_url(cluster: Cluster, proxy: FaultProxy) -> str:
    """The store's URL through the proxy, with timeouts matched to the short lease."""
    if cluster.url.startswith("redis"):
        url = cluster.url.replace("127.0.0.1:6379", proxy.url_netloc())
        return url + "&socket_timeout=1&socket_connect_timeout=1"
    url = cluster.url.replace("127.0.0.1:5432", proxy.url_netloc())
    return url + (
        "&statement_timeout=1s&lock_timeout=1s&idle_in_transaction_session_timeout=1s"
        "&command_timeout=2&connect_timeout=2"
    )


@pytest.fixture(params=["postgres", "redis"])
def backend_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Cluster]]:
    for cluster in cluster_of(STORES[request.param](tmp_path), tmp_path):
        yield request.param, cluster


@pytest.mark.parametrize("fault", ["reserve", "ack", "heartbeat"])
def test_a_blackholed_worker_s_jobs_are_reclaimed_and_done_once(
    backend_cluster: tuple[str, Cluster], fault: str
) -> None:
    backend, cluster = backend_cluster
    from e2e_app import app, record

    ids = [j.id for j in app.enqueue_many(record.message(n, SLEEP * (1 + n % 4)) for n in range(TASKS))]
    upstream = 6379 if backend == "redis" else 5432
    with fault_proxy("127.0.0.1", upstream) as proxy:
        pattern = _redis_pattern(fault) if backend == "redis" else PATTERNS[(backend, fault)]
        proxy.trip_on(pattern)
        a = cluster.worker(env={"CONVEYOR_URL": proxied_url(cluster, proxy)}, **CONFIG)
        a_id = cluster.worker_id(a)
        assert proxy.tripped.wait(30), f"worker A never sent its {fault}"
        tripped = time.monotonic()
        b = cluster.worker(**CONFIG)

        def held_by_a() -> set[str]:
            return {
                j.id for j in app.broker.jobs(queue="default", state="running", limit=500) if j.worker == a_id
            }

        # The store applies the request A sent last, a moment after the proxy forwarded it.
        held = wait_for(held_by_a, 5, "jobs leased to A")

        def done(job_ids: set[str]) -> bool:
            return all((info := app.broker.get(i)) is not None and info.state == "succeeded" for i in job_ids)

        wait_for(lambda: done(held), BOUND + 10, "A's jobs to be reclaimed and done")
        reclaimed_in = time.monotonic() - tripped
        assert reclaimed_in <= BOUND, (reclaimed_in, BOUND)
        assert a.poll() is None, "worker A died of the blackhole"
        proxy.heal()
        wait_for(lambda: done(set(ids)), 60, "every job to be done")
        assert a.poll() is None and b.poll() is None
        cluster.stop_all()

    assert all(info is not None and info.state == "succeeded" for info in (app.broker.get(i) for i in ids))
    ledger = cluster.ledger()
    assert [n for n, c in collections.Counter(ledger).items() if c > 1] == [], "a duplicate effect"
    assert sorted(ledger) == list(range(TASKS))
    executions = cluster.executions()
    duplicates = len(executions) - TASKS
    assert 0 <= duplicates <= len(held), (duplicates, held)
    print(
        f"{backend} blackhole mid-{fault}: A held {len(held)}, done elsewhere in {reclaimed_in:.1f} s"
        f" (bound {BOUND:.1f} s), {duplicates} duplicate deliveries, 0 duplicate effects"
    )
