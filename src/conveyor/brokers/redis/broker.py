"""The Redis backend: one Lua script per operation, pub/sub wake-ups, Cluster-ready key layout.

Every operation is one script call per queue, sent for all queues of a call in one pipelined
round trip (one per node on a cluster); a reservation makes two (due counts for the priority
split, then the claim). The scripts read the store's clock (``TIME``) unless the caller passes
``now``. Idle workers sleep in ``wait`` on a pub/sub subscription to their queues' wake-up
channels, which scripts publish to when they make work pending, with the timeout cut to the
earliest due time of a scheduled task.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.client import PubSub, Redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from conveyor import serializer
from conveyor.brokers import backpressure
from conveyor.brokers.availability import guarded, refused, unavailable
from conveyor.brokers.base import PARK_BUDGET, Broker, Lease, duplicate_id, pause_target, pauses, worker_infos
from conveyor.brokers.redis.scripts import Call, Scripts
from conveyor.brokers.redis.url import parse
from conveyor.brokers.redis.wire import (
    DELIVERY_FIELDS,
    FIELDS,
    LIMIT_FIELDS,
    adopt_fields,
    delivery,
    job,
    limit_info,
    now_arg,
    optional,
    outcome_entry,
    packed_messages,
    packed_outcomes,
    pairs,
    raise_conflict,
    rows,
    rule_arg,
)
from conveyor.errors import ConfigurationError, ConveyorError, KeyConflict, QueueFull
from conveyor.priority import Fairness
from conveyor.records import (
    AckStatus,
    CancelAnswer,
    Delivery,
    Enqueued,
    JobInfo,
    LimitInfo,
    Message,
    Outcome,
    Pause,
    QueueStats,
    Reclaimed,
    Rule,
    WorkerInfo,
)

#: How many (job id -> queue) entries of this process's leases to remember.
_LEASE_BOOK = 100_000
#: Seconds between a process's additions of a queue to the registry of queues.
_REREGISTER = 60.0
#: Longest wait for a subscription to be confirmed.
_SUBSCRIBE_TIMEOUT = 5.0
#: Retries of a Cluster's calls through a failover or a moving slot (see Scripts).
_CLUSTER_RETRIES = 12
#: An idle connection to a silent peer is found dead in idle + interval x count = 11 s.
_KEEPALIVE = (
    {socket.TCP_KEEPIDLE: 5, socket.TCP_KEEPINTVL: 2, socket.TCP_KEEPCNT: 3}
    if hasattr(socket, "TCP_KEEPIDLE")
    else {}
)


def _level(raw: bytes) -> int | None:
    """A priority level from a counts field; None for one that is not a whole number (a corrupt
    record's priority, which the scripts filed its count under)."""
    try:
        return int(raw)
    except ValueError:
        return None


@guarded
class RedisBroker(Broker):
    """Jobs in Redis (or a Redis Cluster); any number of hosts may share it."""

    def __init__(
        self, url: str, retention: float = 86400.0, retries: int = 2, socket_timeout: float = 10.0
    ) -> None:
        """``retries`` (the URL's ``retries`` wins): times a call whose connection failed is
        sent again, after 50 ms, then doubling up to 0.5 s; a refused password, a timeout (the
        call may have run) or a reply are never retried. ``socket_timeout`` (the URL's wins):
        seconds to wait for a reply."""
        self.target = parse(url)
        self.display_url = self.target.display
        self.retention = retention
        retries = retries if self.target.retries is None else self.target.retries
        # A Cluster's failover takes seconds: its scripts ride it out (12 retries, about 15 s)
        # unless the URL says otherwise.
        self._scripts = Scripts(
            cluster=self.target.cluster,
            retries=_CLUSTER_RETRIES if self.target.retries is None else self.target.retries,
        )
        retry = Retry(
            ExponentialBackoff(cap=0.5, base=0.05),
            retries=retries,
            supported_errors=(RedisConnectionError,),
            is_retryable=lambda exc: not isinstance(exc, AuthenticationError),
        )
        # The URL's own settings of these (parsed by redis-py) take precedence.
        options: dict[str, Any] = {
            "retry": retry,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": 5.0,
            "socket_keepalive": True,
            "socket_keepalive_options": _KEEPALIVE,
            "health_check_interval": 15,
        }
        self._client: Any = self._connect(options)
        # Subscriptions get a client that never reconnects behind the wait's back: redis-py
        # would subscribe again silently, losing the wake-ups published meanwhile without the
        # caller knowing to look (wait() drops a broken subscription and returns instead), and
        # a wait would outlive close() on its new connection. Made on first use.
        self._subscription_options = options | {"retry": Retry(NoBackoff(), retries=0)}
        self._subscribing: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._subscribers: list[PubSub] = []
        self._leases: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._registered: dict[str, float] = {}  # queue -> when this process last added it
        self._pid = os.getpid()
        self._closed = False
        self._expire_from = 0

    def __repr__(self) -> str:
        return f"RedisBroker({self.display_url!r})"

    def _translate(self, exc: Exception) -> Exception | None:
        """A refused password as ConfigurationError, a failed connection as StoreUnavailable."""
        if isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc):
            return refused(self.display_url, exc, "check the user and password of the URL")
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | RedisClusterException):
            return unavailable(self.display_url, exc)
        return None

    def _connect(self, options: dict[str, Any]) -> Any:
        if self.target.cluster:
            return RedisCluster.from_url(self.target.url, **options)
        return Redis.from_url(self.target.url, **options)

    # -- keys --------------------------------------------------------------------------------

    def _base(self, queue: str) -> str:
        return f"{self.target.prefix}:{{{queue}}}"

    def _keys(self, queue: str, *names: str) -> list[str]:
        base = self._base(queue)
        return [f"{base}:{name}" for name in names]

    @property
    def _queues_key(self) -> str:
        return f"{self.target.prefix}:queues"

    @property
    def _workers_key(self) -> str:
        return f"{self.target.prefix}:workers"

    def _run(self, calls: Sequence[Call], durable: bool = False) -> list[Any]:
        """``durable``: wait for the replicas the URL's ``wait_replicas`` asks for."""
        if self._closed:
            raise ConfigurationError(f"broker for {self.display_url} is closed")
        return self._scripts.run(self._client, calls, self.target.wait if durable else None)

    def _known_queues(self) -> list[str]:
        return sorted(q.decode() for q in self._client.smembers(self._queues_key))

    def _register(self, queues: Iterable[str]) -> None:
        """Add queues to the registry that cross-queue reads loop over; again now and then, in
        case the registry was lost (a flushed database, a restart without persistence)."""
        clock = time.monotonic()
        stale = sorted({q for q in queues if clock - self._registered.get(q, -_REREGISTER) >= _REREGISTER})
        if stale:
            self._client.sadd(self._queues_key, *stale)
            self._registered.update(dict.fromkeys(stale, clock))

    # -- enqueue -----------------------------------------------------------------------------

    def enqueue(
        self,
        messages: Sequence[Message],
        now: float | None = None,
        connection: Any = None,
        max_queued: Mapping[str, int] | None = None,
    ) -> list[Enqueued]:
        if connection is not None:
            raise ConfigurationError(
                "Redis has no caller transactions: enqueue follow-up tasks with current_job().enqueue()"
            )
        if not messages:
            return []
        by_queue: dict[str, list[int]] = {}
        for i, m in enumerate(messages):
            by_queue.setdefault(m.queue, []).append(i)
        groups = self._slot_groups(list(by_queue))
        caps = backpressure.capped(messages, max_queued)
        if len(groups) > 1 and (caps or any(m.key is not None for m in messages)):
            raise ConfigurationError(
                f"a batch with {'a capped queue (max_queued)' if caps else 'idempotency keys'} must"
                " keep to queues of one hash slot on a Redis Cluster, to be stored all or nothing;"
                f" queues {', '.join(sorted(by_queue))} are in different slots: enqueue them one"
                " queue at a time"
            )
        if len(by_queue) > 1:  # one id in two queues (a script plans one queue at a time)
            queue_of: dict[str, str] = {}
            for m in messages:
                if queue_of.setdefault(m.id, m.queue) != m.queue:
                    raise duplicate_id(m.id)
        self._register(by_queue)
        if self.target.cluster:
            self._refuse_ids_held_elsewhere(messages)
        calls: list[Call] = []
        for group in groups:  # one script per slot: each stores its queues all or nothing
            keys: list[str] = []
            args: list[Any] = [now_arg(now)]
            for q in group:
                keys += self._keys(q, "jobs", "keys", "counts")
                args += packed_messages([messages[i] for i in by_queue[q]])
            if not self.target.cluster:  # the script looks up the ids in every queue
                keys.append(self._queues_key)
            if caps:
                args += [caps.get(q, "") for q in group]
            calls.append(("enqueue", keys, args))
        out = [Enqueued(m.id, True) for m in messages]  # the script names only the others
        for group, reply in zip(groups, self._run(calls, durable=True), strict=True):
            raise_conflict(reply)
            if reply[0] == b"full":
                _, q, pending, cap, adding = reply
                raise QueueFull(group[q - 1], pending, cap, adding)
            for n in range(1, len(reply), 3):
                queue = group[reply[n] - 1]
                out[by_queue[queue][reply[n + 1] - 1]] = Enqueued(reply[n + 2].decode(), False)
        return out

    def _refuse_ids_held_elsewhere(self, messages: Sequence[Message]) -> None:
        """On a Cluster, where a script reads its own slot only, raise DuplicateId if a message's
        id is held by a job of another queue. The look-up reads every queue (a round trip per
        node) before the enqueue scripts run, so it is not atomic with them: two producers
        storing one id in queues of different slots at the same moment can both succeed. The
        scripts check the id within its own queue."""
        queue_of = {m.id: m.queue for m in messages}
        calls: list[Call] = []
        for q in self._known_queues():
            ids = [i for i, queue in queue_of.items() if queue != q]
            if ids:
                calls.append(("held", self._keys(q, "jobs"), ids))
        for reply in self._run(calls):
            if reply:
                raise duplicate_id(reply[0].decode(errors="replace"))

    def _slot_groups(self, queues: list[str]) -> list[list[str]]:
        """``queues`` by the hash slot of their keys: one group on a single server, where one
        script may take keys of any queue."""
        if not self.target.cluster:
            return [queues]
        groups: dict[int, list[str]] = {}
        for q in queues:
            groups.setdefault(key_slot(self._base(q).encode()), []).append(q)
        return list(groups.values())

    # -- reserve -----------------------------------------------------------------------------

    def reserve(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        worker: str,
        fairness: Fairness,
        now: float | None = None,
    ) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        queues = list(dict.fromkeys(queues))
        if len(queues) == 1:  # one round trip: the script splits the limit with the round robin
            (queue,) = queues
            state = [x for pair in zip(fairness.weights, fairness.current, strict=True) for x in pair]
            args = [now_arg(now), repr(float(lease)), worker, "fair", limit, *state]
            (reply,) = self._run(
                [("reserve", self._keys(queue, "jobs", "running", "counts", "dead", "paused"), args)]
            )
            fairness.current[:] = [int(x) for x in reply[1 : 1 + reply[0]]]
            out = [delivery(f, queue) for f in rows(reply, 1 + reply[0], DELIVERY_FIELDS)]
        else:
            out = self._reserve_across(queues, limit, lease, worker, fairness, now)
        out.sort(key=lambda d: (d.priority, d.run_at))
        with self._lock:
            for d in out:
                self._leases[d.id] = d.queue
                self._leases.move_to_end(d.id)
            while len(self._leases) > _LEASE_BOOK:
                self._leases.popitem(last=False)
        return out

    def _reserve_across(
        self,
        queues: list[str],
        limit: int,
        lease: float,
        worker: str,
        fairness: Fairness,
        now: float | None,
    ) -> list[Delivery]:
        """Several queues, in different slots maybe: count their due tasks per level (one round
        trip), split the limit across levels and queues here, then claim (another)."""
        levels = len(fairness.weights)
        replies = self._run(
            [
                ("ready", self._keys(q, "jobs", "counts", "paused"), [now_arg(now), levels, limit])
                for q in queues
            ]
        )
        ready = [[int(reply[1 + level]) for reply in replies] for level in range(levels)]
        take = fairness.split([sum(per_queue) for per_queue in ready], limit)
        per_queue = [[0] * levels for _ in queues]
        for level, wanted in enumerate(take):
            for qi, n in enumerate(fairness.deal(level, wanted, queues, ready[level])):
                per_queue[qi][level] = n
        chosen = [(qi, q) for qi, q in enumerate(queues) if any(per_queue[qi])]
        claimed = self._run(
            [
                (
                    "reserve",
                    self._keys(q, "jobs", "running", "counts", "dead", "paused"),
                    [replies[qi][0], repr(float(lease)), worker, "take", *per_queue[qi]],
                )
                for qi, q in chosen
            ]
        )
        return [
            delivery(f, q)
            for (_, q), reply in zip(chosen, claimed, strict=True)
            for f in rows(reply, 1 + reply[0], DELIVERY_FIELDS)
        ]

    # -- wait --------------------------------------------------------------------------------

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        try:
            sub = self._subscriber(queues)
            if sub is None:  # just subscribed: a wake-up sent before that is lost, so look now
                return
            # Timed from before the call: the store's "now" came later, so this errs early,
            # which costs one more look; late would delay the task.
            asked = time.monotonic()
            dues = self._run([("next_due", self._keys(q, "jobs", "counts", "paused"), []) for q in queues])
            for due in dues:
                if due:
                    timeout = min(timeout, float(due))
            deadline = asked + max(0.0, timeout)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                if remaining <= 0.002:
                    # poll() counts whole milliseconds, rounding up; sleep is exact.
                    time.sleep(remaining)
                    return
                message = sub.get_message(timeout=remaining - 0.001)
                if message is not None and message["type"] in ("message", b"message"):
                    while sub.get_message(timeout=0.0) is not None:  # one wake-up is enough
                        pass
                    return
        except Exception as exc:
            if self._closed:  # close() pulled the connection from under the wait
                return
            if not isinstance(exc, RedisConnectionError | RedisTimeoutError):
                raise
            self._drop_subscriber()  # the next wait subscribes again; the caller looks meanwhile

    def _subscriber(self, queues: Sequence[str], channels: set[str] | None = None) -> PubSub | None:
        """This thread's subscription, moved to ``queues``' channels (or to ``channels``); None
        if it changed now."""
        if self._pid != os.getpid():  # forked: the parent's subscriptions are not ours
            self._pid, self._local, self._subscribers = os.getpid(), threading.local(), []
        sub: PubSub | None = getattr(self._local, "sub", None)
        wanted = channels if channels is not None else {f"{self._base(q)}:wake" for q in queues}
        current: set[str] = getattr(self._local, "channels", set())
        if sub is not None and current == wanted:
            return sub
        if sub is None:
            with self._lock:
                if self._closed:
                    raise ConfigurationError(f"broker for {self.display_url} is closed")
                if self._subscribing is None:
                    self._subscribing = self._connect(self._subscription_options)
                sub = self._subscribing.pubsub()
                self._subscribers.append(sub)
            self._local.sub = sub
        if current - wanted:
            sub.unsubscribe(*sorted(current - wanted))
        new = wanted - current
        if new:
            sub.subscribe(*sorted(new))
            waiting = {c.encode() for c in new}
            deadline = time.monotonic() + _SUBSCRIBE_TIMEOUT
            while waiting and time.monotonic() < deadline:
                message = sub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if message is not None and message["type"] in ("subscribe", b"subscribe"):
                    waiting.discard(message["channel"])
        self._local.channels = wanted
        return None

    def _drop_subscriber(self) -> None:
        sub: PubSub | None = getattr(self._local, "sub", None)
        self._local.sub, self._local.channels = None, set()
        if sub is not None:
            with self._lock:
                if sub in self._subscribers:
                    self._subscribers.remove(sub)
            with contextlib.suppress(RedisError, OSError):
                sub.close()
        if self.target.cluster and self._subscribing is not None:
            # The channel's node may have failed over: the next subscription needs the new layout.
            with contextlib.suppress(RedisError, OSError):
                self._subscribing.nodes_manager.initialize()

    # -- outcomes ----------------------------------------------------------------------------

    def _locate(self, ids: Sequence[str]) -> dict[str, str]:
        """The queue of each job id: this process's leases first, then a look in every queue."""
        with self._lock:
            found = {i: self._leases[i] for i in ids if i in self._leases}
        missing = [i for i in ids if i not in found]
        if missing:
            found |= {found_job.id: found_job.queue for found_job in self._find(missing, None)}
        return found

    def _forget(self, ids: Iterable[str]) -> None:
        with self._lock:
            for i in ids:
                self._leases.pop(i, None)

    def ack(self, outcomes: Sequence[Outcome], now: float | None = None) -> list[AckStatus]:
        if not outcomes:
            return []
        where = self._locate([o.id for o in outcomes])
        statuses: list[AckStatus] = [AckStatus("lost")] * len(outcomes)
        by_queue: dict[str, list[int]] = {}
        for i, o in enumerate(outcomes):
            if o.id in where:
                by_queue.setdefault(where[o.id], []).append(i)
        later: dict[int, list[Message]] = {}  # follow-ups to other slots of a cluster, after the ack
        if self.target.cluster:
            for i, error in self._follow_ups_held_elsewhere(outcomes).items():
                statuses[i] = AckStatus("effects_failed", error)
                for indexes in by_queue.values():
                    if i in indexes:
                        indexes.remove(i)
            by_queue = {q: indexes for q, indexes in by_queue.items() if indexes}
        calls: list[Call] = []
        for queue, indexes in by_queue.items():
            targets: list[str] = []
            entries: list[list[Any]] = []
            follow_ups: list[Message] = []
            slot = key_slot(self._base(queue).encode()) if self.target.cluster else None
            for i in indexes:
                o = outcomes[i]
                follow = list(o.enqueues) if o.kind == "succeeded" else []
                if slot is not None:
                    later[i] = [m for m in follow if key_slot(self._base(m.queue).encode()) != slot]
                    follow = [m for m in follow if m not in later[i]]
                for m in follow:
                    if m.queue not in targets:
                        targets.append(m.queue)
                entries.append(outcome_entry(o, [targets.index(m.queue) + 1 for m in follow]))
                follow_ups += follow
            args: list[Any] = [now_arg(now), repr(float(self.retention)), packed_outcomes(entries)]
            if follow_ups:
                args += packed_messages(follow_ups)
            self._register(targets)
            keys = self._keys(queue, "jobs", "keys", "counts", "running", "dead", "done")
            for t in targets:
                keys += self._keys(t, "jobs", "keys", "counts")
            if follow_ups and not self.target.cluster:  # the script looks up their ids everywhere
                keys.append(self._queues_key)
            calls.append(("ack", keys, args))
        for indexes, reply in zip(by_queue.values(), self._run(calls), strict=True):
            for n, i in enumerate(indexes):
                status, detail = reply[2 * n].decode(), reply[2 * n + 1].decode(errors="replace")
                statuses[i] = AckStatus(status, detail or None)
        elsewhere = [m for i, ms in later.items() if statuses[i].status == "ok" for m in ms]
        if elsewhere:  # one call per slot: a keyed batch must keep to one (see enqueue)
            for group in self._slot_groups(list(dict.fromkeys(m.queue for m in elsewhere))):
                self.enqueue([m for m in elsewhere if m.queue in group], now=now)
        self._forget(o.id for o, s in zip(outcomes, statuses, strict=True) if s.status != "effects_failed")
        return statuses

    def _follow_ups_held_elsewhere(self, outcomes: Sequence[Outcome]) -> dict[int, str]:
        """On a Cluster: the outcomes (by index) whose follow-up enqueues reuse the id of a job,
        with the error they fail with, looked up in every queue as enqueue does (see
        _refuse_ids_held_elsewhere; not atomic with the ack). Their own queues are asked too:
        follow-ups into another slot are enqueued after the ack, too late to fail it."""
        ids = list(dict.fromkeys(m.id for o in outcomes if o.kind == "succeeded" for m in o.enqueues))
        if not ids:
            return {}
        calls: list[Call] = [("held", self._keys(q, "jobs"), ids) for q in self._known_queues()]
        held = {x.decode() for reply in self._run(calls) for x in reply}
        failed: dict[int, str] = {}
        for i, o in enumerate(outcomes):
            taken = [m.id for m in o.enqueues if m.id in held] if o.kind == "succeeded" else []
            if taken:
                failed[i] = f"DuplicateId: job id {taken[0]} is held by another job"
        return failed

    def extend(self, leases: Sequence[Lease], lease: float, now: float | None = None) -> list[str]:
        if not leases:
            return []
        by_queue = self._by_queue(leases)
        replies = self._run(
            [
                (
                    "extend",
                    self._keys(q, "jobs", "running"),
                    [now_arg(now), repr(float(lease)), *pairs(held)],
                )
                for q, held in by_queue.items()
            ]
        )
        lost = {i.decode() for reply in replies for i in reply}
        located = {job_id for held in by_queue.values() for job_id, _ in held}
        return [job_id for job_id, _ in leases if job_id in lost or job_id not in located]

    def set_progress(self, updates: Sequence[tuple[str, int, str]], now: float | None = None) -> int:
        if not updates:
            return 0
        stored = {(job_id, token): p for job_id, token, p in updates}
        by_queue = self._by_queue([(job_id, token) for job_id, token, _ in updates])
        replies = self._run(
            [
                (
                    "progress",
                    self._keys(q, "jobs"),
                    [x for lease in held for x in (lease[0], lease[1], stored[lease])],
                )
                for q, held in by_queue.items()
            ]
        )
        return sum(int(n) for n in replies)

    def release(self, leases: Sequence[Lease]) -> int:
        if not leases:
            return 0
        by_queue = self._by_queue(leases)
        replies = self._run(
            [
                ("release", self._keys(q, "jobs", "running", "counts"), pairs(held))
                for q, held in by_queue.items()
            ]
        )
        self._forget(job_id for job_id, _ in leases)
        return sum(int(n) for n in replies)

    def _by_queue(self, leases: Sequence[Lease]) -> dict[str, list[Lease]]:
        where = self._locate([job_id for job_id, _ in leases])
        by_queue: dict[str, list[Lease]] = {}
        for job_id, token in leases:
            if job_id in where:
                by_queue.setdefault(where[job_id], []).append((job_id, token))
        return by_queue

    def reclaim(self, now: float | None = None) -> Reclaimed:
        replies = self._run(
            [
                ("reclaim", self._keys(q, "jobs", "running", "counts", "dead"), [now_arg(now)])
                for q in self._known_queues()
            ]
        )
        requeued: list[str] = []
        dead: list[str] = []
        for reply in replies:
            for n in range(0, len(reply), 2):
                (requeued if reply[n] == b"requeued" else dead).append(reply[n + 1].decode())
        return Reclaimed(requeued, dead)

    # -- reads and the dead letter queue -----------------------------------------------------

    def _find(self, ids: Sequence[str], now: float | None) -> list[JobInfo]:
        """Jobs by id, looked up in every known queue in one round trip."""
        queues = self._known_queues()
        replies = self._run([("get", self._keys(q, "jobs"), [now_arg(now), *ids]) for q in queues])
        return [
            job(f, q, float(reply[0]))
            for q, reply in zip(queues, replies, strict=True)
            for f in rows(reply, 1)
        ]

    def cancel(self, job_id: str, now: float | None = None) -> bool:
        replies = self._run(
            [
                (
                    "cancel",
                    self._keys(q, "jobs", "counts", "done"),
                    [now_arg(now), repr(self.retention), job_id],
                )
                for q in self._known_queues()
            ]
        )
        return any(replies)

    def request_cancel(self, job_id: str, grace: float, now: float | None = None) -> CancelAnswer:
        replies = self._run(
            [
                (
                    "request_cancel",
                    self._keys(q, "jobs", "counts", "done", "control"),
                    [now_arg(now), repr(self.retention), job_id, repr(float(grace)), self._cancel_prefix],
                )
                for q in self._known_queues()
            ]
        )
        answers = {reply.decode() for reply in replies} - {"missing"}
        for answer in ("cancelling", "cancelled", "finished"):
            if answer in answers:
                return answer
        return "missing"

    def cancelling(self, leases: Sequence[Lease]) -> dict[str, float]:
        if not leases:
            return {}
        by_queue = self._by_queue(leases)
        replies = self._run(
            [("cancelling", self._keys(q, "jobs", "control"), pairs(held)) for q, held in by_queue.items()]
        )
        return {reply[n].decode(): float(reply[n + 1]) for reply in replies for n in range(0, len(reply), 2)}

    def wait_cancel(self, worker: str, timeout: float) -> bool:
        try:
            sub = self._subscriber((), {self._cancel_prefix + worker})
            if sub is None:  # just subscribed: a request before that may have been missed
                return True
            message = sub.get_message(timeout=max(0.0, timeout))
            woken = message is not None and message["type"] in ("message", b"message")
            while sub.get_message(timeout=0.0) is not None:
                woken = True
            return woken
        except Exception as exc:
            if self._closed:
                return False
            if not isinstance(exc, RedisConnectionError | RedisTimeoutError):
                raise
            self._drop_subscriber()
            return True  # the caller looks: a request may have been missed meanwhile

    @property
    def _cancel_prefix(self) -> str:
        """The channel of a worker's cancel requests, but for the worker id (request_cancel.lua)."""
        return f"{self.target.prefix}:cancel:"

    def get(self, job_id: str, now: float | None = None) -> JobInfo | None:
        found = self._find([job_id], now)
        if found and found[0].state == "running":  # a cancel request for its run, if any
            job = found[0]
            mark = self._client.hget(self._keys(job.queue, "control")[0], f"{job.id}\x1fc")
            token = mark.split(b" ")[0] if mark else b""
            if token.isdigit() and self.cancelling([(job.id, int(token))]):
                return msgspec.structs.replace(job, cancelling=True)
        return found[0] if found else None

    def stats(self, queues: Sequence[str] | None = None, now: float | None = None) -> list[QueueStats]:
        names = self._known_queues() if queues is None else list(dict.fromkeys(queues))
        replies = self._run(
            [("stats", self._keys(q, "jobs", "counts", "paused"), [now_arg(now)]) for q in names]
        )
        out = []
        for q, reply in zip(names, replies, strict=True):
            clock = float(reply[0])
            counts: dict[str, dict[int, int]] = {}
            oldest: float | None = None
            throttled = 0
            for n in range(1, len(reply) - 2, 3):
                state, level = reply[n].decode(errors="replace"), _level(reply[n + 1])
                if level is None:  # a count filed under a corrupt record's priority
                    continue
                if state == "oldest":
                    due = float(reply[n + 2])
                    oldest = due if oldest is None else min(oldest, due)
                elif state == "throttled":
                    throttled = int(reply[n + 2])
                elif int(reply[n + 2]):
                    per_level = counts.setdefault(state, {})
                    per_level[level] = per_level.get(level, 0) + int(reply[n + 2])
            out.append(QueueStats(q, counts, None if oldest is None else clock - oldest, throttled))
        return sorted(out, key=lambda s: s.queue)

    def jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        task: str | None = None,
        limit: int = 100,
        offset: int = 0,
        now: float | None = None,
    ) -> list[JobInfo]:
        names = self._known_queues() if queue is None else [queue]
        args = [now_arg(now), state or "", optional(task), offset + limit]
        replies = self._run(
            [
                ("jobs", self._keys(q, "jobs", "counts", "running", "dead", "done", "paused"), args)
                for q in names
            ]
        )
        found = [
            (float(f[17]) if len(f) == FIELDS and f[17] else 0.0, job(f, q, float(reply[0])))
            for q, reply in zip(names, replies, strict=True)
            for f in rows(reply, 1)
        ]
        if state in ("scheduled", "ready"):
            found.sort(key=lambda s_j: (s_j[1].run_at, s_j[0]))
        elif state == "running":
            found.sort(key=lambda s_j: (s_j[1].started_at or 0.0, s_j[0]))
        elif state is None:
            found.sort(key=lambda s_j: -s_j[0])
        else:
            found.sort(key=lambda s_j: (-(s_j[1].finished_at or 0.0), -s_j[0]))
        return [j for _, j in found[offset : offset + limit]]

    # -- limits (docs/flow-control.md; the state lives in the queue's slot, see lib.lua) -------

    def set_limit(self, queue: str, rule: Rule) -> None:
        stored = rule_arg(queue, rule)
        self._register([queue])
        self._run([("limit", self._keys(queue, "jobs", "counts"), ["set", rule.key, stored])])

    def clear_limit(self, queue: str, key: str) -> bool:
        (reply,) = self._run([("limit", self._keys(queue, "jobs", "counts"), ["clear", key])])
        return bool(reply)

    def limits(self, queue: str | None = None, now: float | None = None) -> list[LimitInfo]:
        names = self._known_queues() if queue is None else [queue]
        replies = self._run([("limits", self._keys(q, "jobs", "counts"), [now_arg(now)]) for q in names])
        found = [
            limit_info(f, q)
            for q, reply in zip(names, replies, strict=True)
            for f in rows(reply, 0, LIMIT_FIELDS)
        ]
        return sorted(found, key=lambda i: (i.queue, i.key))

    def time(self) -> float:
        reply = self._client.time()
        if isinstance(reply, dict):  # a cluster asked every node: any master's clock will do
            reply = next(iter(reply.values()))
        seconds, micros = reply
        return float(seconds) + float(micros) / 1_000_000

    def beat(self, worker: WorkerInfo, ttl: float, now: float | None = None) -> None:
        args = [now_arg(now), worker.id, repr(float(ttl)), serializer.dumps(worker)]
        self._run([("beat", [self._workers_key], args)])

    def workers(self, now: float | None = None) -> list[WorkerInfo]:
        if now is None:
            now = self.time()
        live: list[tuple[bytes, bytes]] = []
        gone: list[bytes] = []
        for worker_id, entry in self._client.hgetall(self._workers_key).items():
            head, _, info = entry.partition(b" ")
            try:
                expires = float(head)
            except ValueError:  # no expiry to read: left out as corrupt, with its warning
                live.append((worker_id, b"not a registry entry: " + entry[:80]))
                continue
            if expires >= now:
                live.append((worker_id, info))
            elif expires < now - 3600:
                gone.append(worker_id)
        if gone:
            self._client.hdel(self._workers_key, *gone)
        return sorted(worker_infos(live), key=lambda w: w.id)

    def replay(
        self, ids: Sequence[str] | None = None, queue: str | None = None, now: float | None = None
    ) -> int:
        sources: dict[str, list[str] | None] = {}  # queue -> its dead jobs to replay (None: all)
        if ids is None:
            sources = dict.fromkeys(self._known_queues())
        else:
            for j in self._find(ids, now):
                if j.state == "dead":
                    sources[j.queue] = [*(sources.get(j.queue) or []), j.id]
        moving: dict[str, list[list[Any]]] = {}  # raw job rows, by the queue they leave
        others = [q for q in sources if q != queue] if queue is not None else []
        listed = self._run(
            [
                (
                    "jobs",
                    self._keys(q, "jobs", "counts", "running", "dead", "done", "paused"),
                    ["", "dead", "", 2**31],
                )
                for q in others
            ]
        )
        for q, reply in zip(others, listed, strict=True):
            wanted = sources[q]
            moving[q] = [f for f in rows(reply, 1) if wanted is None or f[0].decode() in wanted]
        count = 0
        if queue is not None and any(moving.values()):
            self._register([queue])
            args = [
                now_arg(now),
                *(x for leaving in moving.values() for f in leaving for x in adopt_fields(f)),
            ]
            (reply,) = self._run([("adopt", self._keys(queue, "jobs", "keys", "counts"), args)])
            if reply[0] == b"invalid":
                raise ConveyorError(
                    f"cannot replay job {reply[1].decode(errors='replace')}: its record is corrupt"
                )
            if reply[0] == b"conflict":
                job_id, key, holder = (x.decode() for x in reply[1:4])
                raise KeyConflict(
                    f"cannot replay job {job_id} into {queue!r}: job {holder} holds key {key!r}"
                )
            count += int(reply[1])
            self._run(
                [
                    (
                        "purge",
                        self._keys(q, "jobs", "keys", "counts", "dead"),
                        ["0", *(f[0] for f in leaving)],
                    )
                    for q, leaving in moving.items()
                    if leaving
                ]
            )
        in_place = [(q, wanted) for q, wanted in sources.items() if q not in moving]
        replies = self._run(
            [
                (
                    "replay",
                    self._keys(q, "jobs", "counts", "dead"),
                    [now_arg(now), "1" if wanted is None else "0", *(wanted or [])],
                )
                for q, wanted in in_place
            ]
        )
        return count + sum(int(n) for n in replies)

    def purge(self, ids: Sequence[str] | None = None) -> int:
        args = ["1"] if ids is None else ["0", *ids]
        replies = self._run(
            [("purge", self._keys(q, "jobs", "keys", "counts", "dead"), args) for q in self._known_queues()]
        )
        return sum(int(n) for n in replies)

    def expire(self, now: float | None = None, limit: int = 1000) -> int:
        queues = self._known_queues()
        if not queues:
            return 0
        # Each call starts at the next queue, so one queue's long tail cannot starve the others.
        self._expire_from = (self._expire_from + 1) % len(queues)
        count = 0
        for q in queues[self._expire_from :] + queues[: self._expire_from]:
            if count >= limit:
                break
            (n,) = self._run(
                [("expire", self._keys(q, "jobs", "keys", "counts", "done"), [now_arg(now), limit - count])]
            )
            count += int(n)
        return count

    # -- pause and resume --------------------------------------------------------------------

    def pause(self, queue: str, task: str | None = None, now: float | None = None) -> None:
        queue, stored = pause_target(queue, task)
        self._register([queue])  # so that paused() finds it
        self._run([("pause", self._keys(queue, "paused"), [stored, now_arg(now)])], durable=True)

    def resume(self, queue: str, task: str | None = None) -> None:
        queue, stored = pause_target(queue, task)
        # The parked jobs go back a batch per script, so that Redis serves others in between.
        while self._run(
            [("resume", self._keys(queue, "jobs", "paused"), [stored, PARK_BUDGET])], durable=True
        )[0]:
            pass

    def paused(self, queues: Sequence[str] | None = None) -> list[Pause]:
        names = self._known_queues() if queues is None else list(dict.fromkeys(queues))
        replies = self._run([("paused", self._keys(q, "paused"), []) for q in names])
        return pauses(
            [
                (q, reply[i].decode(), float(reply[i + 1]))
                for q, reply in zip(names, replies, strict=True)
                for i in range(0, len(reply), 2)
            ]
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subscribers, self._subscribers = list(self._subscribers), []
        if self._pid != os.getpid():
            return  # forked: leave the parent's connections alone
        for sub in subscribers:
            with contextlib.suppress(RedisError, OSError):
                sub.close()
        if self._subscribing is not None:
            self._subscribing.close()
        self._client.close()
