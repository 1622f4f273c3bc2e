"""Crash storm (scenario A): thousands of tasks, workers SIGKILLed at random and restarted, and
the store itself hard-restarted once half way (PostgreSQL in immediate mode; a private Redis
with ``appendfsync always``, SIGKILLed), on every backend; then an offline check of the
whole history.

``make test`` runs the CI size; ``make chaos`` the soak (``CONVEYOR_CHAOS=soak``: 100,000 tasks).

The checker asserts, from the store, the ledger and the execution log:
- no loss: every job the client saw enqueued ends succeeded (none dead, none left over);
- effects exactly once: one ledger row per task, no task twice;
- leases exclusive: every execution ran under a fencing token no other execution had;
- bounded duplicates: executions beyond one per task are at most what the kills and the restart
  can explain (the tasks in flight at each);
- attempts bounded by ``max_attempts``.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Cluster, cluster_of
from stores import STORES, RedisStore, SQLiteStore, Store

pytestmark = pytest.mark.slow

SOAK = os.environ.get("CONVEYOR_CHAOS") == "soak"
TASKS = 100_000 if SOAK else 5_000
#: Each task sleeps this long, so a run lasts at least TASKS * SLEEP / (WORKERS * CONCURRENCY)
#: seconds (5 s at CI size) whatever the speed of the worker: long enough for the kills.
SLEEP = 0.025
WORKERS = 3
CONCURRENCY = 8
KILL_EVERY = 2.0 if SOAK else 0.5
CONFIG = {"lease": 1.0, "heartbeat": 0.2, "reclaim_interval": 0.2, "concurrency": CONCURRENCY}


def _restart_postgres() -> None:
    """An immediate shutdown: no checkpoint, sessions cut off, recovery from the WAL on start."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", "-m", "immediate", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


Restart = Callable[[], None] | None


def _sqlite(tmp_path: Path) -> Iterator[tuple[Store, Restart]]:
    """Its worker processes are the store: SIGKILLing them mid-write is its crash."""
    store = SQLiteStore(tmp_path)
    store.url += "?synchronous=full"
    yield store, None


def _postgres(tmp_path: Path) -> Iterator[tuple[Store, Restart]]:
    yield STORES["postgres"](tmp_path), _restart_postgres


def _redis(tmp_path: Path) -> Iterator[tuple[Store, Restart]]:
    """A private Redis that fsyncs every write before replying, SIGKILLed and started again."""
    from redis_servers import server

    with server(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always") as redis:

        def crash_and_restart() -> None:
            redis.kill()
            redis.start()

        yield RedisStore(tmp_path, f"redis://127.0.0.1:{redis.port}/0"), crash_and_restart


BACKENDS: dict[str, Callable[[Path], Iterator[tuple[Store, Restart]]]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
    "redis": _redis,
}


@pytest.fixture(params=[name for name in BACKENDS if name in STORES])
def storm(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Cluster, Restart]]:
    for store, restart in BACKENDS[request.param](tmp_path):
        for cluster in cluster_of(store, tmp_path):
            yield cluster, restart


def test_crash_storm_loses_nothing_and_duplicates_no_effect(
    storm: tuple[Cluster, Restart],
) -> None:
    cluster, restart = storm
    from e2e_app import app, record

    ids: list[str] = []
    for start in range(0, TASKS, 1000):
        jobs = app.enqueue_many(record.message(n, SLEEP) for n in range(start, min(TASKS, start + 1000)))
        ids += [j.id for j in jobs]
    began = time.monotonic()
    workers = [cluster.worker(**CONFIG) for _ in range(WORKERS)]
    rng = random.Random(11)
    kills = restarts = 0

    def finished() -> int:
        stats = app.broker.stats(["default"])[0]
        return stats.total("succeeded") + stats.total("dead")

    deadline = time.monotonic() + (3600 if SOAK else 150)
    next_kill = time.monotonic() + KILL_EVERY
    while (done := finished()) < TASKS:
        assert time.monotonic() < deadline, f"only {done} of {TASKS} finished"
        if restart is not None and not restarts and done >= TASKS // 2:
            restart()
            restarts += 1
        if time.monotonic() >= next_kill:
            victim = rng.randrange(WORKERS)
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            workers[victim] = cluster.worker(**CONFIG)
            kills += 1
            next_kill = time.monotonic() + KILL_EVERY * rng.uniform(0.5, 1.5)
        time.sleep(0.05)
    cluster.stop_all()

    # No loss, nothing dead, attempts bounded.
    infos = [app.broker.get(i) for i in ids]
    assert all(info is not None and info.state == "succeeded" for info in infos)
    assert max(info.attempt for info in infos if info is not None) <= 10
    # Effects exactly once.
    ledger = cluster.ledger()
    assert [n for n, c in collections.Counter(ledger).items() if c > 1] == []
    assert sorted(ledger) == list(range(TASKS))
    # Leases exclusive, duplicates bounded.
    executions = [line.split() for line in cluster.executions()]
    tokens = [(n, token) for n, token, _pid in executions]
    assert len(set(tokens)) == len(tokens), "two executions ran under the same fencing token"
    extra = len(executions) - TASKS
    in_flight = CONCURRENCY  # a killed worker can have run at most this many tasks unacknowledged
    assert 0 <= extra <= (kills + restarts * WORKERS) * in_flight, (extra, kills, restarts)
    assert kills >= 3
    assert restarts == (restart is not None)
    print(
        f"chaos: {TASKS} tasks, {kills} kills, {restarts} store restarts, 0 lost, 0 duplicate effects, "
        f"{extra} duplicate deliveries, 0 dead, {time.monotonic() - began:.0f} s"
    )


# -- network faults (scenario B) ------------------------------------------------------------

NET_TASKS = 20_000 if SOAK else 2_000
#: Seconds between faults, and how long a blackhole or a latency spell lasts.
FAULT_EVERY = 2.0 if SOAK else 0.8
FAULT_LASTS = (1.2, 2.0)
NET_BACKENDS = {"postgres": 5432, "redis": 6379}


def _through(url: str, upstream: int, netloc: str) -> str:
    """``url`` through a fault proxy, with timeouts matched to the storm's 1 s lease."""
    url = url.replace(f"127.0.0.1:{upstream}", netloc)
    if url.startswith("redis"):
        return url + "&socket_timeout=1&socket_connect_timeout=1"
    return url + (
        "&statement_timeout=1s&lock_timeout=1s&idle_in_transaction_session_timeout=1s"
        "&command_timeout=2&connect_timeout=2"
    )


@pytest.fixture(params=[name for name in NET_BACKENDS if name in STORES])
def net_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Cluster]]:
    for cluster in cluster_of(STORES[request.param](tmp_path), tmp_path):
        yield request.param, cluster


def test_network_storm_loses_nothing_and_duplicates_no_effect(net_cluster: tuple[str, Cluster]) -> None:
    """Each worker talks to the store through its own fault proxy; at random times, a random
    worker's link is blackholed (longer than the lease), reset, or slowed, in turn, then healed. The same offline checks
    as the crash storm."""
    from fault_proxy import FaultProxy

    backend, cluster = net_cluster
    from e2e_app import app, record

    ids: list[str] = []
    for start in range(0, NET_TASKS, 1000):
        jobs = app.enqueue_many(record.message(n, SLEEP) for n in range(start, min(NET_TASKS, start + 1000)))
        ids += [j.id for j in jobs]
    upstream = NET_BACKENDS[backend]
    proxies = [FaultProxy("127.0.0.1", upstream) for _ in range(WORKERS)]
    began = time.monotonic()
    try:
        workers = [
            cluster.worker(env={"CONVEYOR_URL": _through(cluster.url, upstream, p.url_netloc())}, **CONFIG)
            for p in proxies
        ]
        rng = random.Random(12)
        kinds = itertools.cycle(["blackhole", "drop", "blackhole", "latency"])
        faults: collections.Counter[str] = collections.Counter()
        heal_at: dict[int, float] = {}

        def finished() -> int:
            stats = app.broker.stats(["default"])[0]
            return stats.total("succeeded") + stats.total("dead")

        deadline = time.monotonic() + (3600 if SOAK else 120)
        next_fault = time.monotonic() + FAULT_EVERY
        while finished() < NET_TASKS:
            assert time.monotonic() < deadline, f"only {finished()} of {NET_TASKS} finished"
            now = time.monotonic()
            for i, at in list(heal_at.items()):
                if now >= at:
                    proxies[i].heal()
                    del heal_at[i]
            if now >= next_fault:
                victim = rng.choice([i for i in range(WORKERS) if i not in heal_at] or [0])
                kind = next(kinds)
                proxies[victim].latency = 0.05
                proxies[victim].mode = kind
                heal_at[victim] = now + (0.2 if kind == "drop" else rng.uniform(*FAULT_LASTS))
                faults[kind] += 1
                next_fault = now + FAULT_EVERY * rng.uniform(0.5, 1.5)
            time.sleep(0.05)
        for p in proxies:
            p.heal()
        assert all(w.poll() is None for w in workers), "a worker died of a network fault"
        cluster.stop_all()
    finally:
        for p in proxies:
            p.close()

    infos = [app.broker.get(i) for i in ids]
    assert all(info is not None and info.state == "succeeded" for info in infos)
    ledger = cluster.ledger()
    assert [n for n, c in collections.Counter(ledger).items() if c > 1] == []
    assert sorted(ledger) == list(range(NET_TASKS))
    executions = [line.split() for line in cluster.executions()]
    tokens = [(n, token) for n, token, _pid in executions]
    assert len(set(tokens)) == len(tokens), "two executions ran under the same fencing token"
    extra = len(executions) - NET_TASKS
    # A fault can cost the victim's leases: at most what it had in flight.
    assert 0 <= extra <= sum(faults.values()) * CONCURRENCY, (extra, faults)
    assert faults["blackhole"] >= 2
    print(
        f"network storm ({backend}): {NET_TASKS} tasks, faults {dict(faults)}, 0 lost, 0 duplicate effects,"
        f" {extra} duplicate deliveries, 0 dead, {time.monotonic() - began:.0f} s"
    )
