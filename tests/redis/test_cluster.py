"""Redis Cluster: what the contract suite cannot show, on real clusters and real worker processes.

The whole contract suite runs on a cluster as its ``redis-cluster`` backend (see
``tests/contract/backends.py``). Here: queues spread over the primaries, a slot moved while
workers drain it (MOVED, ASK, TRYAGAIN), and a primary killed while they drain it, its replica
promoted, with and without waiting for the replica (``wait_replicas``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.client import Redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis_servers import Server, cluster, session_cluster, slot_owner, topology, wait_cluster_ok
from waiting import wait_for

from conveyor import Conveyor
from conveyor.brokers.redis import RedisBroker
from conveyor.errors import ConfigurationError, NotReplicated
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome

HERE = Path(__file__).parent
RETENTION = 3600.0


# -- queues over the session cluster's primaries ------------------------------------------------


@pytest.fixture
def broker() -> Iterator[RedisBroker]:
    port = session_cluster()[0].port
    handle = RedisBroker(f"redis://127.0.0.1:{port}?cluster=1&prefix=ct-{os.urandom(5).hex()}", RETENTION)
    yield handle
    handle.close()
    client = RedisCluster(host="127.0.0.1", port=port)
    try:
        keys = list(client.scan_iter(match=f"{handle.target.prefix}:*", target_nodes=RedisCluster.PRIMARIES))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


def test_queues_are_spread_over_the_primaries(broker):
    queues = [f"queue-{n}" for n in range(12)]
    broker.enqueue([Message(id=new_id(), task="t", queue=q, priority=0, payload=b"[]") for q in queues])

    holders = {slot_owner(session_cluster()[0].port, key_slot(f"{{{q}}}".encode()))["port"] for q in queues}
    assert len(holders) == 3
    for port in holders:
        client = Redis(port=port)
        try:
            assert any(client.scan_iter(match=f"{broker.target.prefix}:{{queue-*}}:jobs"))
        finally:
            client.close()


def test_a_worker_round_across_queues_on_every_node(broker):
    queues = [f"queue-{n}" for n in range(6)]
    ids = [
        e.id
        for e in broker.enqueue(
            [
                Message(id=new_id(), task="t", queue=q, priority=1, payload=b"[]", max_attempts=2)
                for q in queues
                for _ in range(3)
            ]
        )
    ]
    fairness = Fairness((6, 3, 1))

    first = broker.reserve(queues, 100, 30.0, "w1", fairness)
    assert sorted(d.id for d in first) == sorted(ids)
    kinds = ["succeeded", "retry", "dead"]
    statuses = broker.ack(
        [Outcome(d.id, d.token, kinds[n % 3], error={"type": "E"}) for n, d in enumerate(first)]
    )
    assert {s.status for s in statuses} == {"ok"}
    retried = [d.id for n, d in enumerate(first) if n % 3 == 1]
    dead = [d.id for n, d in enumerate(first) if n % 3 == 2]

    again = broker.reserve(queues, 100, 30.0, "w1", fairness)
    assert sorted(d.id for d in again) == sorted(retried)
    assert {d.attempt for d in again} == {2}
    assert sorted(j.id for j in broker.dead(limit=100)) == sorted(dead)

    assert broker.replay(dead, queue="repair") == len(dead)
    assert sorted(d.id for d in broker.reserve(["repair"], 100, 30.0, "w1", fairness)) == sorted(dead)
    assert {broker.get(i).queue for i in dead} == {"repair"}
    assert sum(s.total("succeeded") for s in broker.stats()) == len(first) - len(retried) - len(dead)


# -- faults: a private cluster (3 primaries, a replica each, node timeout 1 s) ------------------


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    with cluster(tmp_path_factory.mktemp("faulty"), masters=3, replicas=1, node_timeout=1000) as nodes:
        yield nodes


class Drain:
    """Worker processes of ``cluster_app`` draining one queue of a cluster, a producer thread
    enqueueing to it, and what each job did: its executions and its ledger entries."""

    def __init__(self, tmp_path: Path, nodes: list[Server], queue: str, options: str = "") -> None:
        self.nodes, self.queue = nodes, queue
        self.prefix = f"ct-{os.urandom(5).hex()}"
        self.url = f"redis://127.0.0.1:{self.alive()[0]}?cluster=1&prefix={self.prefix}{options}"
        self.ledger = f"{self.prefix}:{{{queue}}}:ledger"
        self.exec_log = tmp_path / "executions.log"
        self.logs = tmp_path
        self.env = os.environ | {
            "CONVEYOR_URL": self.url,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "CLUSTER_EXEC_LOG": str(self.exec_log),
            "CONVEYOR_LOG_LEVEL": "WARNING",
        }
        import cluster_app

        self.record = cluster_app.record
        self.app: Conveyor = cluster_app.app
        self.app.close()
        self.app.url = self.url
        self.procs: list[subprocess.Popen[bytes]] = []
        #: Jobs whose enqueue returned, in order.
        self.acknowledged: list[str] = []
        self.numbers: dict[str, int] = {}
        self.producer_errors: list[BaseException] = []
        self._stop = threading.Event()
        self._producer: threading.Thread | None = None

    def alive(self) -> list[int]:
        return [n.port for n in self.nodes if n.proc is not None]

    @property
    def broker(self) -> Any:
        return self.app.broker

    def messages(self, start: int, count: int, pad: str = "") -> list[Message]:
        out = [
            self.record.message(n, self.ledger, pad, queue=self.queue, key=f"job-{n}")
            for n in range(start, start + count)
        ]
        self.numbers.update({m.id: n for m, n in zip(out, range(start, start + count), strict=True)})
        return out

    def enqueue(self, start: int, count: int) -> list[Message]:
        """Enqueue jobs ``start..start+count-1`` in one batch, sent again (same ids) until a call
        returns; an error is kept for the test to see."""
        batch = self.messages(start, count)
        while True:
            try:
                self.broker.enqueue(batch)
                break
            except Exception as exc:
                self.producer_errors.append(exc)
        self.acknowledged += [m.id for m in batch]
        return batch

    def produce(self, start: int, batch: int, backlog: int = 200) -> None:
        """Enqueue batches from a thread until :meth:`stop_producing`, while fewer than
        ``backlog`` jobs of the queue are unfinished."""

        def unfinished() -> int:
            try:
                (stats,) = self.broker.stats([self.queue])
            except Exception:  # the queue's node is failing over
                return backlog
            return sum(sum(levels.values()) for state, levels in stats.counts.items() if state != "succeeded")

        def run() -> None:
            n = start
            while not self._stop.is_set():
                if unfinished() >= backlog:
                    self._stop.wait(0.02)
                    continue
                self.enqueue(n, batch)
                n += batch

        self._producer = threading.Thread(target=run, daemon=True)
        self._producer.start()

    def stop_producing(self) -> None:
        self._stop.set()
        if self._producer is not None:
            self._producer.join(60)
            assert not self._producer.is_alive()

    def start_workers(self, count: int, **config: Any) -> None:
        import json

        config = {"queues": [self.queue], "concurrency": 4, "lease": 5.0, **config}
        for n in range(count):
            log = open(self.logs / f"worker-{n}.log", "wb")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "conveyor.worker.process", "cluster_app:app", json.dumps(config)],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def stop_workers(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def logged(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("worker-*.log")))

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.alive()[0])

    def ledger_entries(self) -> list[int]:
        client = self.client()
        try:
            return [int(n) for n in client.lrange(self.ledger, 0, -1)]
        finally:
            client.close()

    def executions(self) -> Counter[int]:
        if not self.exec_log.exists():
            return Counter()
        return Counter(int(line.split()[0]) for line in self.exec_log.read_text().splitlines())

    def close(self) -> None:
        self._stop.set()
        self.stop_workers()
        self.app.close()


@pytest.fixture
def drain(
    request: pytest.FixtureRequest, tmp_path: Path, faulty: list[Server]
) -> Iterator[Callable[..., Drain]]:
    made: list[Drain] = []

    def make(queue: str, options: str = "") -> Drain:
        made.append(Drain(tmp_path, faulty, queue, options))
        return made[-1]

    yield make
    for d in made:
        d.close()
    wait_cluster_ok([port for d in made for port in d.alive()][:1] or [faulty[0].port])


def settle(condition: Callable[[], Any], timeout: float) -> None:
    """Wait for ``condition`` at most ``timeout`` seconds; the assertions that follow say what
    was missing."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def errors_seen(port: int) -> int:
    """Error replies a node has sent that mean "not here, or not now" (and the scripts' errors)."""
    client = Redis(port=port)
    try:
        stats = client.info("errorstats")
    finally:
        client.close()
    return sum(
        v["count"] for k, v in stats.items() if k.split("_", 1)[1] in ("ASK", "TRYAGAIN", "ERR", "MOVED")
    )


class Move:
    """The standard resharding steps for one slot, by hand: :meth:`begin` marks it importing
    on another primary and migrating on its own, :meth:`keys` moves keys, :meth:`end` moves
    the rest and gives the slot to the target."""

    def __init__(self, any_port: int, slot: int) -> None:
        self.slot = slot
        self.source = slot_owner(any_port, slot)
        self.target = next(
            n for n in topology(any_port) if "master" in n["flags"] and n["id"] != self.source["id"]
        )
        self.src, self.dst = Redis(port=self.source["port"]), Redis(port=self.target["port"])

    def begin(self) -> None:
        self.dst.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source["id"])
        self.src.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target["id"])

    def keys(self, *keys: str) -> None:
        self.src.execute_command("MIGRATE", "127.0.0.1", self.target["port"], "", 0, 5000, "KEYS", *keys)

    def end(self) -> None:
        while keys := self.src.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 2):
            self.keys(*(k.decode() for k in keys))
        for node in topology(self.source["port"]):
            if "master" in node["flags"]:
                client = Redis(port=node["port"])
                try:
                    client.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.target["id"])
                finally:
                    client.close()
        self.src.close()
        self.dst.close()


def test_a_script_writes_nothing_in_a_half_moved_slot_and_runs_once_the_move_ends(faulty):
    """An enqueue whose queue's keys are half moved (its pending zset on the target, its jobs,
    keys and counts hashes still on the source) is refused and sent again, having written
    nothing, until the slot has moved; then it runs once, on the target."""
    broker = RedisBroker(f"redis://127.0.0.1:{faulty[0].port}?cluster=1&prefix=ct-{os.urandom(5).hex()}")
    base = f"{broker.target.prefix}:{{half}}"
    first = Message(id=new_id(), task="t", queue="half", priority=0, payload=b"[]", key="k1")
    broker.enqueue([first])
    move = Move(faulty[0].port, key_slot(b"half"))
    move.begin()
    move.keys(f"{base}:pending:0")
    before = errors_seen(move.source["port"])
    second = Message(id=new_id(), task="t", queue="half", priority=0, payload=b"[]", key="k2")
    outcome: list[Any] = []

    def send() -> None:
        try:
            outcome.append(broker.enqueue([second]))
        except Exception as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    try:
        sender.start()
        wait_for(lambda: errors_seen(move.source["port"]) >= before + 3, 10, "the enqueue to be refused")
        assert not move.src.hexists(f"{base}:jobs", second.id)
        assert outcome == []
    finally:
        move.end()
    sender.join(20)
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    assert [e.created for e in outcome[0]] == [True]
    assert {d.id for d in broker.reserve(["half"], 10, 30.0, "w", Fairness((1,)))} == {first.id, second.id}
    broker.close()


def test_a_slot_moved_while_workers_drain_it(drain):
    """The standard resharding steps on the queue's slot while two worker processes drain it and
    a producer enqueues to it: every job ends once, with one ledger entry, and no worker dies."""
    d = drain("moving")
    slot = key_slot(b"moving")
    level = d.enqueue(0, 1500)[0].priority
    d.start_workers(2)
    wait_for(lambda: len(d.ledger_entries()) >= 200, 60, "the workers to drain")
    d.produce(100_000, 20)

    move = Move(d.alive()[0], slot)
    move.begin()
    try:
        before = errors_seen(move.source["port"])
        # The key every script of the queue reads first leaves first; the workers and the producer
        # must meet the half-moved slot (with their own keys still there) before the rest moves.
        move.keys(f"{d.prefix}:{{moving}}:pending:{level}")
        wait_for(lambda: errors_seen(move.source["port"]) >= before + 10, 30, "calls to meet the moving slot")
    finally:
        move.end()
    wait_for(lambda: slot_owner(d.alive()[0], slot)["id"] == move.target["id"], 10, "the slot to move")
    wait_for(lambda: len(d.ledger_entries()) >= 1600, 60, "the workers to go on after the move")
    d.stop_producing()

    total = len(d.acknowledged)
    settle(lambda: len(d.ledger_entries()) >= total, 60)
    entries = Counter(d.ledger_entries())
    lost = set(d.numbers.values()) - set(entries)
    assert (len(lost), [n for n, times in entries.items() if times > 1]) == (0, [])
    assert d.broker.stats([d.queue])[0].counts == {"succeeded": {level: total}}
    assert [p.returncode for p in d.procs] == [None, None], d.logged()
    assert d.producer_errors == []


def fail_over(d: Drain, slot: int, batches: int) -> dict[str, Any]:
    """With a producer enqueueing and two workers draining the queue of ``slot``: stop (SIGSTOP)
    the replica of its primary, enqueue ``batches`` batches of 50 jobs of 8 kB, kill (SIGKILL)
    the primary and resume the replica: a replica that lags when its primary dies, the case
    asynchronous replication loses writes in. Wait for the replica to take over and for the
    workers to go on; restart the killed node (it comes back as a replica); return what
    happened to the jobs whose enqueue returned, and to the others."""
    d.enqueue(0, 600)
    d.start_workers(2)
    wait_for(lambda: len(d.ledger_entries()) >= 100, 60, "the workers to drain")
    d.produce(100_000, 20)
    primary = slot_owner(d.alive()[0], slot)
    replica = next(n for n in topology(primary["port"]) if n["master"] == primary["id"])
    victim = next(n for n in d.nodes if n.port == primary["port"])
    follower = next(n for n in d.nodes if n.port == replica["port"])
    assert victim.proc is not None and follower.proc is not None
    refused: list[Message] = []
    follower.proc.send_signal(signal.SIGSTOP)
    try:
        for k in range(batches):
            batch = d.messages(10_000 + 50 * k, 50, pad="x" * 8000)
            try:
                d.broker.enqueue(batch)
            except NotReplicated:
                refused += batch
            else:
                d.acknowledged += [m.id for m in batch]
        victim.kill()
    finally:
        follower.proc.send_signal(signal.SIGCONT)
    killed = time.monotonic()
    wait_for(lambda: slot_owner(replica["port"], slot)["id"] == replica["id"], 30, "the replica to take over")
    promoted = time.monotonic() - killed
    victim.start()  # rejoins as a replica of the promoted node
    wait_cluster_ok([n.port for n in d.nodes])
    ran = len(d.ledger_entries())
    wait_for(lambda: len(d.ledger_entries()) >= ran + 100, 60, "the workers to go on after the failover")
    d.stop_producing()

    stored = {i for i in d.numbers if d.broker.get(i) is not None}
    settle(lambda: set(d.ledger_entries()) >= {d.numbers[i] for i in stored}, 60)
    entries = Counter(d.ledger_entries())
    outcome = {
        "acknowledged": len(d.acknowledged),
        "lost_enqueues": sum(1 for i in d.acknowledged if i not in stored),
        "refused": len(refused),
        "refused_but_kept": sum(1 for m in refused if m.id in stored),
        "not_run": sum(1 for i in stored if d.numbers[i] not in entries),
        "twice_in_the_ledger": sum(1 for times in entries.values() if times > 1),
        "ran_twice": sum(1 for times in d.executions().values() if times > 1),
        "promoted_after_s": round(promoted, 2),
        "workers_alive": [p.poll() is None for p in d.procs],
    }
    print(f"failover ({'wait_replicas' if 'wait_replicas' in d.url else 'no wait'}): {outcome}")
    return outcome


def test_a_primary_killed_while_workers_drain_its_queue(drain):
    """Without waiting for replicas: the workers carry on after the failover, and every job still
    stored runs to success once in effects. Replication is asynchronous, so an enqueue that
    returned may be lost and an acknowledgement undone (its job runs again, its effects in Redis
    undone with it): counted and printed (``-s``)."""
    d = drain("failing")
    outcome = fail_over(d, key_slot(b"failing"), batches=60)
    assert outcome["workers_alive"] == [True, True], d.logged()
    assert (outcome["not_run"], outcome["twice_in_the_ledger"]) == (0, 0)
    # 24 MB written while the replica lagged: more than the sockets between them buffer.
    assert outcome["lost_enqueues"] > 0


def test_wait_replicas_loses_no_enqueue_when_the_primary_dies(drain):
    """With ``wait_replicas=1``, an enqueue returns only once a replica has it: the primary
    killed right after loses none, and with no replica left an enqueue says so (NotReplicated),
    though stored on the primary."""
    d = drain("durable", "&wait_replicas=1&wait_timeout=1000")
    slot = key_slot(b"durable")
    outcome = fail_over(d, slot, batches=3)
    assert outcome["workers_alive"] == [True, True], d.logged()
    assert (outcome["lost_enqueues"], outcome["not_run"], outcome["twice_in_the_ledger"]) == (0, 0, 0)
    assert outcome["refused"] == 150  # the replica stopped: each enqueue was told, none returned

    # A primary without a replica: the enqueue is stored, but the caller is told.
    primary = slot_owner(d.alive()[0], slot)
    replica = next(n for n in topology(primary["port"]) if n["master"] == primary["id"])
    alone = next(n for n in d.nodes if n.port == replica["port"])
    alone.kill()
    try:
        with pytest.raises(NotReplicated, match="0 of the 1 replicas"):
            d.broker.enqueue(d.messages(20_000, 1))
    finally:
        alone.start()
        wait_cluster_ok([n.port for n in d.nodes])


def test_a_keyed_batch_across_slots_is_refused_whole(broker):
    """One script per hash slot cannot store a batch all or nothing across slots: a batch with
    keys must keep to one slot, and one that does not is refused before anything is stored."""
    spread = [Message(id=new_id(), task="t", queue=f"queue-{n}", priority=0, payload=b"[]") for n in range(6)]
    keyed = [msgspec.structs.replace(m, key="k") for m in spread]

    with pytest.raises(ConfigurationError, match="one hash slot"):
        broker.enqueue(keyed)

    assert [broker.get(m.id) for m in keyed] == [None] * len(keyed)
    assert all(e.created for e in broker.enqueue(spread))  # without keys: nothing can conflict
    one_slot = [msgspec.structs.replace(m, id=new_id(), queue="queue-0") for m in keyed[:2]]
    assert [e.created for e in broker.enqueue(one_slot)] == [True, False]


def test_a_batch_with_a_capped_queue_across_slots_is_refused_whole(broker):
    """A capped queue's batch is refused whole when full: across slots it cannot be, so a batch
    naming a capped queue must keep to one slot, as one with keys."""
    spread = [Message(id=new_id(), task="t", queue=f"queue-{n}", priority=0, payload=b"[]") for n in range(6)]

    with pytest.raises(ConfigurationError, match=r"capped queue \(max_queued\).*one hash slot"):
        broker.enqueue(spread, max_queued={"queue-3": 100})

    assert [broker.get(m.id) for m in spread] == [None] * len(spread)
    assert all(e.created for e in broker.enqueue(spread, max_queued={"elsewhere": 1}))  # none capped
