"""The PostgreSQL backend: one transaction per operation, LISTEN/NOTIFY wake-ups.

Operations take a connection from a small pool (opened on first use, which also creates or
upgrades the schema). The database's clock decides due times and leases unless the caller
passes ``now``. Producers NOTIFY the schema's channel with the queue's name in the transaction
that makes work ready; idle workers LISTEN on a dedicated connection (one per waiting thread;
its first wait returns at once, since wake-ups sent before it listened are lost) and otherwise
sleep until the earliest due time, so there is no polling.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import tuple_row

from conveyor import headers as stored_headers
from conveyor import limits as buckets
from conveyor import serializer
from conveyor.brokers import backpressure
from conveyor.brokers.availability import guarded, refused, unavailable
from conveyor.brokers.base import (
    Broker,
    Lease,
    claimed,
    duplicate_id,
    error_records,
    job_row,
    pause_target,
    pauses,
    resends,
    worker_infos,
)
from conveyor.brokers.postgres import migrate as migrations
from conveyor.brokers.postgres import queries
from conveyor.brokers.postgres.dsn import parse
from conveyor.brokers.postgres.listener import Listener
from conveyor.brokers.postgres.pool import Pool, alive
from conveyor.errors import ConfigurationError, ConveyorError, KeyConflict
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

Connection = psycopg.Connection[tuple[Any, ...]]

#: Per listed state: the stored state, the due-time filter and the order of ``jobs``.
#: A parked job (set aside while its task is paused) is listed as the pending job it is.
_LISTINGS: dict[str | None, tuple[str | None, str, str]] = {
    "scheduled": (None, "AND state IN ('pending', 'parked') AND run_at > clock.now", "run_at, seq"),
    "ready": (None, "AND state IN ('pending', 'parked') AND run_at <= clock.now", "run_at, seq"),
    "running": ("running", "", "started_at, seq"),
    None: (None, "", "seq DESC"),
}
_FINISHED_LISTING = ("", "finished_at DESC, seq DESC")
#: What a server says when it refuses a session for a reason retrying cannot fix.
_REFUSALS = (
    "does not exist",
    "authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "permission denied for database",
)
#: SQLSTATE classes of a session or server in trouble (connection exception, insufficient
#: resources, operator intervention), whatever exception class psycopg gives them.
_UNAVAILABLE_CLASSES = ("08", "53", "57")
#: Longest wait for one of ``max_connections`` to come back when all are busy.
_POOL_WAIT = 10.0
#: Most leases a handle remembers as claimed without limits (see PostgresBroker._plain).
_PLAIN_MAX = 65536


@guarded
class PostgresBroker(Broker):
    """Jobs in one schema of a PostgreSQL database; any number of hosts may share it."""

    def __init__(self, url: str, retention: float = 86400.0, max_connections: int = 10) -> None:
        self.target = parse(url)
        self.display_url = self.target.display
        self.retention = retention
        self._max_connections = max_connections
        self._sql = queries.load(self.target.ident)
        self._listings = {
            state: self._sql["jobs"].replace("{due}", due).replace("{order}", order)
            for state, (_, due, order) in _LISTINGS.items()
        }
        self._listings["finished"] = (
            self._sql["jobs"].replace("{due}", _FINISHED_LISTING[0]).replace("{order}", _FINISHED_LISTING[1])
        )
        self._lock = threading.Lock()
        self._pool: Pool | None = None
        self._ready = False
        self._pid = os.getpid()
        self._local = threading.local()
        self._listeners: list[Listener] = []
        #: Connections of threads that asked for their own (see own_connection).
        self._owned: list[Connection] = []
        self._interrupt_r, self._interrupt_w = os.pipe()
        self._closed = False
        #: Deliveries this handle claimed without limits (no group, no slot), id -> token: their
        #: outcomes take the statements without the limits clause. A hint only: an outcome this
        #: handle did not see claimed takes the full statement, which is right for any job.
        self._plain: dict[str, int] = {}
        self._plain_lock = threading.Lock()

    # -- connections -------------------------------------------------------------------------

    def _translate(self, exc: Exception) -> Exception | None:
        """A failed connection as StoreUnavailable, or a refused one as ConfigurationError."""
        if isinstance(exc, psycopg.OperationalError):
            text = str(exc)
            if "FATAL" in text and any(reason in text for reason in _REFUSALS):
                return refused(self.display_url, exc, "check the user, password and database of the URL")
            return unavailable(self.display_url, exc)
        if isinstance(exc, psycopg.InterfaceError):  # a connection closed under the call
            return unavailable(self.display_url, exc)
        if isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in _UNAVAILABLE_CLASSES:
            return unavailable(self.display_url, exc)
        if isinstance(exc, pg_errors.IdleInTransactionSessionTimeout | pg_errors.LockNotAvailable):
            return unavailable(self.display_url, exc)  # the session's timeouts (see dsn)
        return None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A pooled autocommit connection (see pool.Pool), or this thread's own (see
        own_connection); the first use migrates. Either is cut after command_timeout."""
        if getattr(self._local, "owns", False):
            conn = self._own()
            try:
                with self._open().watched(conn):
                    yield conn
            finally:
                if not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
            return
        with self._open().connection() as conn:
            yield conn

    def own_connection(self) -> None:
        self._local.owns = True

    def _own(self) -> Connection:
        """This thread's own connection, (re)connected when the server ended it."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._pid == os.getpid() and alive(conn):
            return conn
        self._open()  # the schema, and a fork's reset
        if conn is not None:
            with self._lock:
                if conn in self._owned:
                    self._owned.remove(conn)
            with contextlib.suppress(psycopg.Error):
                conn.close()
        conn = psycopg.connect(self.target.conninfo, autocommit=True)
        with self._lock:
            if self._closed:  # closed while connecting
                conn.close()
                raise ConfigurationError(f"broker for {self.display_url} is closed")
            self._owned.append(conn)
        self._local.conn = conn
        return conn

    def _open(self) -> Pool:
        if self._pool is not None and self._ready and self._pid == os.getpid():
            return self._pool
        with self._lock:
            if self._closed:
                raise ConfigurationError(f"broker for {self.display_url} is closed")
            if self._pid != os.getpid():  # forked: the parent's connections are not ours to use
                self._pid, self._pool, self._ready = os.getpid(), None, False
                self._local, self._listeners, self._owned = threading.local(), [], []
                os.close(self._interrupt_r)  # our copies; interrupting would wake the parent
                os.close(self._interrupt_w)
                self._interrupt_r, self._interrupt_w = os.pipe()
            if not self._ready:
                migrations.ensure(self.target)  # a direct connection: fails fast, with the reason
                self._ready = True
            if self._pool is None:
                self._pool = Pool(
                    self.target.conninfo, self._max_connections, _POOL_WAIT, self.target.command_timeout
                )
            return self._pool

    # -- enqueue -----------------------------------------------------------------------------

    def enqueue(
        self,
        messages: Sequence[Message],
        now: float | None = None,
        connection: Any = None,
        max_queued: Mapping[str, int] | None = None,
    ) -> list[Enqueued]:
        if not messages:
            return []
        caps = backpressure.capped(messages, max_queued)
        if connection is None:
            with self._connect() as conn:
                if caps:
                    with conn.pipeline(), conn.transaction():
                        return self._insert_capped(conn, messages, now, caps)
                if all(m.key is None and m.headers is None for m in messages):
                    try:
                        return self._insert_unkeyed(conn, messages, now)  # one statement, one round trip
                    except pg_errors.UniqueViolation:
                        pass  # an id is taken (the statement stored nothing): sort it out below
                # Pipelined: BEGIN travels with the insert, the wake-up with COMMIT.
                with conn.pipeline(), conn.transaction():
                    return self._insert(conn, messages, now)
        if not isinstance(connection, psycopg.Connection):
            raise ConfigurationError("connection must be a psycopg Connection to the store's database")
        self._open()  # the store's tables exist (the first use migrates) before the caller writes to them
        status = connection.info.transaction_status
        if status == psycopg.pq.TransactionStatus.INERROR:
            raise ConfigurationError("the connection's transaction has failed: roll it back first")
        if connection.autocommit and status == psycopg.pq.TransactionStatus.IDLE:
            raise ConfigurationError("connection has no open transaction: use `with conn.transaction():`")
        # The caller's transaction (begun by this statement if none is yet): the rows and their
        # wake-up exist iff the caller commits. A key conflict undoes only this batch.
        connection.execute("SAVEPOINT conveyor_enqueue")
        try:
            out = (
                self._insert_capped(connection, messages, now, caps)
                if caps
                else self._insert(connection, messages, now)
            )
        except BaseException:
            connection.execute("ROLLBACK TO SAVEPOINT conveyor_enqueue")
            connection.execute("RELEASE SAVEPOINT conveyor_enqueue")
            raise
        connection.execute("RELEASE SAVEPOINT conveyor_enqueue")
        return out

    def _insert_capped(
        self, conn: Connection, messages: Sequence[Message], now: float | None, caps: dict[str, int]
    ) -> list[Enqueued]:
        """Insert in the open transaction into queues some of which are capped: lock the capped
        queues (one advisory lock each, held to the end of the transaction), insert, count each
        capped queue's pending jobs; QueueFull leaves the caller to roll back. Producers of a
        capped queue take turns, so none overshoots its cap; uncapped queues never wait here."""
        cur = conn.cursor(row_factory=tuple_row)
        cur.execute(self._sql["lock_queues"], {"scope": self.target.schema, "queues": list(caps)})
        out = self._insert(conn, messages, now)
        adding = {q: backpressure.added(messages, out, q) for q in caps}
        counted = [q for q in caps if adding[q]]
        if counted:
            rows = cur.execute(
                self._sql["count_pending"],
                {
                    "queues": counted,
                    "bounds": [backpressure.count_limit(caps[q], adding[q]) for q in counted],
                },
            ).fetchall()
            for q, (after,) in zip(counted, rows, strict=True):
                backpressure.check(q, after, caps[q], adding[q])
        return out

    def _insert_unkeyed(
        self, conn: Connection, messages: Sequence[Message], now: float | None
    ) -> list[Enqueued]:
        """Insert messages without keys and wake their queues in one statement (those with
        limits join their groups in it too): nothing can conflict, so every one is created (in
        the open transaction, if any)."""
        if any(m.limits for m in messages):
            conn.cursor(row_factory=tuple_row).execute(
                self._sql["enqueue_grouped"],
                {
                    **_columns(messages),
                    "grps": [buckets.group_of(m.limits) for m in messages],
                    "rules": [msgspec.json.encode(m.limits).decode() if m.limits else None for m in messages],
                    "now": now,
                    "channel": self.target.channel,
                },
            )
        else:
            conn.cursor(row_factory=tuple_row).execute(
                self._sql["enqueue_unkeyed"],
                {**_columns(messages), "now": now, "channel": self.target.channel},
            )
        return [Enqueued(m.id, True) for m in messages]

    def _insert(self, conn: Connection, messages: Sequence[Message], now: float | None) -> list[Enqueued]:
        """Insert in the open transaction, NOTIFY the queues of new jobs; KeyConflict leaves the
        caller to roll back."""
        cur = conn.cursor(row_factory=tuple_row)  # the caller's connection may have another
        keyed = [m for m in messages if m.key is not None]
        if keyed:
            cur.execute(
                self._sql["lock_keys"],
                {
                    "scope": self.target.schema,
                    "queues": [m.queue for m in keyed],
                    "keys": [m.key for m in keyed],
                },
            )
        rows = cur.execute(
            self._sql["enqueue"],
            {
                **_columns(messages),
                "keys": [m.key for m in messages],
                "grps": [buckets.group_of(m.limits) for m in messages],
                "rules": [msgspec.json.encode(m.limits).decode() if m.limits else None for m in messages],
                "headers": [
                    None if m.headers is None else stored_headers.encode(m.headers) for m in messages
                ],
                "now": now,
            },
        ).fetchall()
        out: list[Enqueued | None] = []
        created: dict[tuple[str, str | None], Message] = {}
        ids: dict[str, Message] = {}  # the batch's messages inserted so far, by id
        unresolved: list[int] = []
        for i, (m, (inserted, holder, same, id_held, resent)) in enumerate(zip(messages, rows, strict=True)):
            key = (m.queue, m.key)
            if holder is not None:  # the key is held: its job, whatever the message's id
                if not same:
                    raise _conflict(m.key, holder)
                out.append(Enqueued(holder, False))
            elif m.key is not None and key in created:  # a key repeated within the batch
                first = created[key]
                if (first.task, first.payload) != (m.task, m.payload):
                    raise _conflict(m.key, first.id)
                out.append(Enqueued(first.id, False))
            elif m.id in ids:  # an id repeated within the batch: the same message, or refused
                if ids[m.id] != m and not resends(m, _stored(ids[m.id])):
                    raise duplicate_id(m.id)
                out.append(Enqueued(m.id, True))
            elif id_held:  # the same message sent again, or another job's id
                if not resent:
                    raise duplicate_id(m.id)
                out.append(Enqueued(m.id, True))
            elif inserted:
                out.append(Enqueued(m.id, True))
                ids[m.id] = m
                if m.key is not None:
                    created[key] = m
            else:  # taken by a transaction that committed after this statement began
                out.append(None)
                unresolved.append(i)
        if unresolved:
            self._resolve(conn, messages, unresolved, out)
        done = [e for e in out if e is not None]
        self._notify(conn, {m.queue for m, e in zip(messages, done, strict=True) if e.created})
        return done

    def _resolve(
        self, conn: Connection, messages: Sequence[Message], indexes: list[int], out: list[Enqueued | None]
    ) -> None:
        wanted = [messages[i] for i in indexes]
        cur = conn.cursor(row_factory=tuple_row)
        rows = cur.execute(
            self._sql["key_holders"],
            {"queues": [m.queue for m in wanted], "keys": [m.key for m in wanted]},
        ).fetchall()
        holders = {(queue, key): (job_id, task, payload) for queue, key, job_id, task, payload in rows}
        by_id = {
            row[0]: row[1:]
            for row in cur.execute(self._sql["id_holders"], {"ids": [m.id for m in wanted]}).fetchall()
        }
        for i, m in zip(indexes, wanted, strict=True):
            holder = holders.get((m.queue, m.key))
            if holder is None and m.id in by_id:  # the id was taken, not the key
                if not resends(m, by_id[m.id]):
                    raise duplicate_id(m.id)
                out[i] = Enqueued(m.id, True)
                continue
            if holder is None:  # the holder expired in between: rare enough to hand back
                raise ConveyorError(f"key {m.key!r} changed hands during the enqueue; try again")
            if (holder[1], bytes(holder[2])) != (m.task, m.payload):
                raise _conflict(m.key, holder[0])
            out[i] = Enqueued(holder[0], False)

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
        with self._connect() as conn:
            # Candidates, split and claim in one statement (the schema's reserve function), which
            # hands back the worker's new fairness state in its last row.
            rows = conn.execute(
                self._sql["reserve"],
                {
                    "queues": queues,
                    "weights": list(fairness.weights),
                    "fair": list(fairness.current),
                    "qweights": fairness.queue_weights_of(queues),
                    "qfair": fairness.queue_state(queues),
                    "strict": fairness.strict,
                    "limit": limit,
                    "lease": float(lease),
                    "worker": worker,
                    "now": now,
                },
            ).fetchall()
        state = rows.pop()
        fairness.current[:] = state[11]
        fairness.set_queue_state(queues, state[12])
        plain = self._plain
        with self._plain_lock:
            for r in rows:
                if not r[14]:
                    plain[r[0]] = r[7]
            while len(plain) > _PLAIN_MAX:  # leases lost without an outcome here
                del plain[next(iter(plain))]
        # claimed() reads a row's 12th column as the throttle count (here it is r_throttled),
        # its 13th as the headers (read after the function's columns).
        return claimed([(*r[:11], r[13] or 0, r[15]) for r in rows])

    def _all_plain(self, outcomes: Iterable[Outcome]) -> bool:
        """Whether this handle claimed the jobs of all these outcomes without limits."""
        plain = self._plain
        return all(plain.get(o.id) == o.token for o in outcomes)

    def _forget_plain(self, outcomes: Iterable[Outcome]) -> None:
        plain = self._plain
        with self._plain_lock:
            for o in outcomes:
                plain.pop(o.id, None)

    # -- wait --------------------------------------------------------------------------------

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        listener = self._listener()
        if listener is None:  # just started listening: what came before it may have been missed
            return
        asked = time.monotonic()  # before the query: errs early (one more look), never late
        with self._connect() as conn:
            (due_in,) = conn.execute(self._sql["next_due"], {"queues": list(queues)}).fetchone() or (None,)
        if due_in is not None:
            timeout = min(timeout, max(0.0, asked + due_in - time.monotonic()))
        with listener.lock:
            if self._closed:
                return
            try:
                listener.wait(set(queues), timeout)
            except psycopg.Error:
                self._drop_listener(listener)  # the next wait reconnects
                raise

    def _listener(self) -> Listener | None:
        """This thread's wake-up connection, or None if it had to be (re)connected just now."""
        listener: Listener | None = getattr(self._local, "listener", None)
        if listener is not None and not listener.broken and self._pid == os.getpid():
            return listener
        if listener is not None:
            self._drop_listener(listener)
        self._open()
        listener = Listener(self.target, self._interrupt_r)
        with self._lock:
            if self._closed:  # closed while connecting
                listener.close()
                return None
            self._listeners.append(listener)
        self._local.listener = listener
        return None

    def _drop_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
        if getattr(self._local, "listener", None) is listener:
            self._local.listener = None
        if self._pid == os.getpid():
            listener.close()

    # -- outcomes ----------------------------------------------------------------------------

    def ack(self, outcomes: Sequence[Outcome], now: float | None = None) -> list[AckStatus]:
        if not outcomes:
            return []
        statuses: dict[int, AckStatus] = {}
        control = [(i, o) for i, o in enumerate(outcomes) if o.kind in ("cancelled", "snoozed")]
        if control:
            self._settle_control(control, now, statuses)
            outcomes = [o for i, o in enumerate(outcomes) if i not in statuses]
            if not outcomes:
                return [statuses[i] for i in range(len(statuses))]
            rest = self.ack(outcomes, now)
            merged = iter(rest)
            return [statuses[i] if i in statuses else next(merged) for i in range(len(statuses) + len(rest))]
        # A retry or throttle of a run with a cancel request ends the job cancelled: checked in
        # the same transaction (cancel_returned), so a request never lands between the two.
        returning = [o for o in outcomes if o.kind in ("retry", "throttled")]
        simple = [(i, o) for i, o in enumerate(outcomes) if not (o.effects or o.enqueues)]
        with self._connect() as conn, conn.transaction() if returning else contextlib.nullcontext():
            if len(simple) == len(outcomes):
                # Without effects: one autocommit statement, one round trip, one commit.
                self._settle(conn, simple, now, statuses)
            else:
                with conn.transaction():
                    # Every group and key the transaction may lock, first and in the claims'
                    # order: the follow-up enqueues' groups too (an enqueue upserts its groups).
                    follow = [m for o in outcomes for m in o.enqueues if m.limits]
                    if follow or not self._all_plain(outcomes):
                        conn.execute(
                            self._sql["lock_settling"],
                            {
                                "ids": [o.id for o in outcomes],
                                "tokens": [o.token for o in outcomes],
                                "kinds": [o.kind for o in outcomes],
                                "e_queues": [m.queue for m in follow],
                                "e_prios": [m.priority for m in follow],
                                "e_grps": [buckets.group_of(m.limits) for m in follow],
                                "e_rules": [msgspec.json.encode(m.limits).decode() for m in follow],
                            },
                        )
                    self._settle(conn, simple, now, statuses)
                    for i, o in enumerate(outcomes):
                        if i not in statuses:
                            statuses[i] = self._settle_with_effects(conn, o, now)
            if returning:
                conn.execute(
                    self._sql["cancel_returned"],
                    {**_leases(returning), "retention": self.retention, "now": now},
                )
        self._forget_plain(outcomes)
        return [statuses[i] for i in range(len(outcomes))]

    def _settle_control(
        self, outcomes: list[tuple[int, Outcome]], now: float | None, statuses: dict[int, AckStatus]
    ) -> None:
        """Outcomes ``cancelled`` and ``snoozed`` in one statement of their own (ack_control)."""
        batch = [o for _, o in outcomes]
        with self._connect() as conn:
            rows = conn.execute(
                self._sql["ack_control"],
                {
                    **_leases(batch),
                    "kinds": [o.kind for o in batch],
                    "delays": [float(o.delay) for o in batch],
                    "errors": [None if o.error is None else _error_json(o.error) for o in batch],
                    "caps": [max(0, min(o.max_snoozes, 2**31 - 1)) for o in batch],
                    "retention": self.retention,
                    "channel": self.target.channel,
                    "now": now,
                },
            ).fetchall()
        settled = {job_id for (job_id,) in rows}
        for i, o in outcomes:
            statuses[i] = AckStatus("ok" if o.id in settled else "lost")
            settled.discard(o.id)  # a second outcome for the same job in one batch is stale
        self._forget_plain(batch)

    def _settle(
        self,
        conn: Connection,
        outcomes: list[tuple[int, Outcome]],
        now: float | None,
        statuses: dict[int, AckStatus],
    ) -> None:
        """Outcomes without effects in one statement (retries wake their queues): the kind's
        own when they are all of one kind (the usual batch), else ack_mixed, which settles every
        kind and then their limits at once (two statements in one transaction would take limit
        locks in two rounds, out of the order every claim takes them in)."""
        if len({o.kind for _, o in outcomes}) > 1:
            batch = [o for _, o in outcomes]
            rows = conn.execute(
                self._sql["ack_mixed"],
                {
                    **_leases(batch),
                    "kinds": [o.kind for o in batch],
                    "results": [o.result if o.kind == "succeeded" else None for o in batch],
                    "delays": [float(o.delay) for o in batch],
                    "errors": [None if o.kind == "succeeded" else _error_json(o.error) for o in batch],
                    "retention": self.retention,
                    "channel": self.target.channel,
                    "now": now,
                },
            ).fetchall()
            mixed: set[tuple[str, str]] = {(kind, job_id) for kind, job_id in rows}
            for i, o in outcomes:
                ok = (o.kind, o.id) in mixed
                mixed.discard((o.kind, o.id))
                statuses[i] = AckStatus("ok" if ok else "lost")
            return
        by_kind = {
            kind: [o for _, o in outcomes if o.kind == kind]
            for kind in ("succeeded", "retry", "dead", "throttled")
        }
        # Claimed here without limits: the statements without the limits clause.
        plain = "_plain" if self._all_plain(o for _, o in outcomes) else ""
        cursors: list[tuple[str, psycopg.Cursor[tuple[Any, ...]]]] = []
        if by_kind["succeeded"]:
            batch = by_kind["succeeded"]
            cursors.append(
                (
                    "succeeded",
                    conn.execute(
                        self._sql["ack_succeeded" + plain],
                        {
                            **_leases(batch),
                            "results": [o.result for o in batch],
                            "retention": self.retention,
                            "channel": self.target.channel,
                            "now": now,
                        },
                    ),
                )
            )
        if by_kind["retry"]:
            batch = by_kind["retry"]
            cursors.append(
                (
                    "retry",
                    conn.execute(
                        self._sql["ack_retry" + plain],
                        {
                            **_leases(batch),
                            "delays": [float(o.delay) for o in batch],
                            "errors": [_error_json(o.error) for o in batch],
                            "channel": self.target.channel,
                            "now": now,
                        },
                    ),
                )
            )
        if by_kind["dead"]:
            batch = by_kind["dead"]
            cursors.append(
                (
                    "dead",
                    conn.execute(
                        self._sql["ack_dead" + plain],
                        {
                            **_leases(batch),
                            "errors": [_error_json(o.error) for o in batch],
                            "channel": self.target.channel,
                            "now": now,
                        },
                    ),
                )
            )
        if by_kind["throttled"]:
            batch = by_kind["throttled"]
            cursors.append(
                (
                    "throttled",
                    conn.execute(
                        self._sql["ack_throttled"],
                        {
                            **_leases(batch),
                            "delays": [float(o.delay) for o in batch],
                            "errors": [_error_json(o.error) for o in batch],
                            "channel": self.target.channel,
                            "now": now,
                        },
                    ),
                )
            )
        settled: set[tuple[str, str]] = set()  # (kind, job id)
        for kind, cur in cursors:
            settled.update((kind, job_id) for (job_id,) in cur.fetchall())
        for i, o in outcomes:
            ok = (o.kind, o.id) in settled
            settled.discard((o.kind, o.id))  # a second outcome for the same job in one batch is stale
            statuses[i] = AckStatus("ok" if ok else "lost")

    def _settle_with_effects(self, conn: Connection, o: Outcome, now: float | None) -> AckStatus:
        """A succeeded outcome with effects and follow-up enqueues, in a savepoint of its own:
        if any of them fails, it and they are undone and the lease is still held."""
        try:
            with conn.transaction():
                settled = conn.execute(
                    self._sql["ack_succeeded"],
                    {
                        **_leases([o]),
                        "results": [o.result],
                        "retention": self.retention,
                        "channel": self.target.channel,
                        "now": now,
                    },
                ).fetchall()
                if not settled:
                    return AckStatus("lost")
                for statement, *params in o.effects:
                    # No parameters: no placeholders either, so a literal % needs no escaping.
                    conn.execute(statement, (params[0] if params else None) or None, *params[1:])
                if o.enqueues:
                    self._insert(conn, o.enqueues, now)
        except Exception as exc:  # whatever an effect raised, only its outcome fails
            if conn.broken or conn.closed:
                raise
            return AckStatus("effects_failed", f"{type(exc).__name__}: {exc}")
        return AckStatus("ok")

    def extend(self, leases: Sequence[Lease], lease: float, now: float | None = None) -> list[str]:
        if not leases:
            return []
        with self._connect() as conn:
            rows = conn.execute(
                self._sql["extend"],
                {
                    "ids": [job_id for job_id, _ in leases],
                    "tokens": [token for _, token in leases],
                    "lease": float(lease),
                    "now": now,
                },
            )
            held = {job_id for (job_id,) in rows}
        return [job_id for job_id, _ in leases if job_id not in held]

    def release(self, leases: Sequence[Lease]) -> int:
        if not leases:
            return 0
        with self._connect() as conn, conn.transaction():
            rows = conn.execute(
                self._sql["release"],
                {
                    "ids": [job_id for job_id, _ in leases],
                    "tokens": [token for _, token in leases],
                    "channel": self.target.channel,
                    "now": None,
                },
            ).fetchall()
            self._notify(conn, {queue for (queue,) in rows})
        with self._plain_lock:
            for job_id, _ in leases:
                self._plain.pop(job_id, None)
        return len(rows)

    def reclaim(self, now: float | None = None) -> Reclaimed:
        with self._connect() as conn:
            if conn.execute(self._sql["any_expired"], {"now": now}).fetchone() is None:
                return Reclaimed([], [])
            with conn.transaction():
                rows = conn.execute(
                    self._sql["reclaim"], {"now": now, "channel": self.target.channel}
                ).fetchall()
                requeued = [job_id for job_id, state, _ in rows if state == "pending"]
                self._notify(conn, {queue for _, state, queue in rows if state == "pending"})
        return Reclaimed(requeued, [job_id for job_id, state, _ in rows if state == "dead"])

    def _notify(self, conn: Connection, queues: set[str]) -> None:
        if queues:
            conn.execute(self._sql["notify"], {"channel": self.target.channel, "queues": sorted(queues)})

    # -- reads and the dead letter queue -----------------------------------------------------

    def cancel(self, job_id: str, now: float | None = None) -> bool:
        with self._connect() as conn:
            cur = conn.execute(self._sql["cancel"], {"id": job_id, "retention": self.retention, "now": now})
            return cur.rowcount > 0

    def request_cancel(self, job_id: str, grace: float, now: float | None = None) -> CancelAnswer:
        with self._connect() as conn:
            row = conn.execute(
                self._sql["request_cancel"],
                {
                    "id": job_id,
                    "grace": float(grace),
                    "retention": self.retention,
                    "channel": self.target.channel,
                    "now": now,
                },
            ).fetchone()
        if row is None:
            return "missing"
        if row[0] in ("pending", "parked"):
            return "cancelled"
        return "cancelling" if row[0] == "running" else "finished"

    def cancelling(self, leases: Sequence[Lease]) -> dict[str, float]:
        if not leases:
            return {}
        with self._connect() as conn:
            rows = conn.execute(
                self._sql["cancelling"],
                {"ids": [job_id for job_id, _ in leases], "tokens": [token for _, token in leases]},
            ).fetchall()
        return {job_id: float(grace or 0.0) for job_id, grace in rows}

    def wait_cancel(self, worker: str, timeout: float) -> bool:
        listener = self._listener()
        if listener is None:  # just started listening: a request before that may have been missed
            return True
        with listener.lock:
            if self._closed:
                return False
            try:
                return listener.wait({"!" + worker}, timeout)
            except psycopg.Error:
                self._drop_listener(listener)  # the next wait reconnects
                raise

    def set_progress(self, updates: Sequence[tuple[str, int, str]], now: float | None = None) -> int:
        if not updates:
            return 0
        with self._connect() as conn:
            cur = conn.execute(
                self._sql["set_progress"],
                {
                    "ids": [u[0] for u in updates],
                    "tokens": [u[1] for u in updates],
                    "progress": [u[2] for u in updates],
                },
            )
            return cur.rowcount

    def get(self, job_id: str, now: float | None = None) -> JobInfo | None:
        with self._connect() as conn:
            row = conn.execute(self._sql["get"], {"id": job_id, "now": now}).fetchone()
        return None if row is None else _job(row)

    def stats(self, queues: Sequence[str] | None = None, now: float | None = None) -> list[QueueStats]:
        with self._connect() as conn:
            rows = conn.execute(
                self._sql["stats"], {"queues": None if queues is None else list(queues), "now": now}
            ).fetchall()
        by_queue: dict[str, tuple[dict[str, dict[int, int]], list[float]]] = {
            q: ({}, []) for q in queues or ()
        }
        held: dict[str, int] = {}  # per queue: ready jobs limits hold back, -1 for all of them
        for queue, priority, state, count, oldest, clock in rows:
            if state is None:  # the limits' row: waiting groups' ready jobs, queue limit shut
                held[queue] = -1 if oldest else count
                continue
            counts, ages = by_queue.setdefault(queue, ({}, []))
            counts.setdefault(state, {})[priority] = count
            if oldest is not None:
                ages.append(clock - oldest)
        return [
            QueueStats(
                queue=q,
                counts=c,
                oldest_ready_age=max(a) if a else None,
                throttled=sum(c.get("ready", {}).values()) if held.get(q) == -1 else held.get(q, 0),
            )
            for q, (c, a) in sorted(by_queue.items())
        ]

    def jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        task: str | None = None,
        limit: int = 100,
        offset: int = 0,
        now: float | None = None,
    ) -> list[JobInfo]:
        stored = _LISTINGS[state][0] if state in _LISTINGS else state
        statement = self._listings[state] if state in _LISTINGS else self._listings["finished"]
        params = {"state": stored, "queue": queue, "task": task, "limit": limit, "offset": offset, "now": now}
        with self._connect() as conn:
            rows = conn.execute(statement, params).fetchall()
        return [_job(r) for r in rows]

    def time(self) -> float:
        with self._connect() as conn:
            row = conn.execute(self._sql["time"]).fetchone()
        assert row is not None
        return float(row[0])

    def beat(self, worker: WorkerInfo, ttl: float, now: float | None = None) -> None:
        with self._connect() as conn:
            conn.execute(
                self._sql["beat"],
                {"id": worker.id, "info": serializer.dumps(worker).decode(), "ttl": float(ttl), "now": now},
            )

    def workers(self, now: float | None = None) -> list[WorkerInfo]:
        with self._connect() as conn:
            rows = conn.execute(self._sql["workers"], {"now": now}).fetchall()
        return worker_infos(rows)

    def replay(
        self, ids: Sequence[str] | None = None, queue: str | None = None, now: float | None = None
    ) -> int:
        params = {
            "ids": None if ids is None else list(ids),
            "queue": queue,
            "now": now,
            "channel": self.target.channel,
        }
        try:
            with self._connect() as conn, conn.transaction():
                if queue is not None:
                    clash = conn.execute(self._sql["replay_clash"], params).fetchone()
                    if clash is not None:
                        raise KeyConflict(
                            f"cannot replay job {clash[0]} into {queue!r}: job {clash[2]} holds key {clash[1]!r}"
                        )
                rows = conn.execute(self._sql["replay"], params).fetchall()
                self._notify(conn, {q for (q,) in rows})
        except pg_errors.UniqueViolation as exc:  # two replayed jobs bring the same key
            raise KeyConflict(f"cannot replay into {queue!r}: two of the jobs hold the same key") from exc
        return len(rows)

    def purge(self, ids: Sequence[str] | None = None) -> int:
        with self._connect() as conn:
            return conn.execute(self._sql["purge"], {"ids": None if ids is None else list(ids)}).rowcount

    def expire(self, now: float | None = None, limit: int = 1000) -> int:
        with self._connect() as conn:
            # Idle limit state: groups locked by one statement, deleted by the next (whose
            # snapshot sees every job made pending before it), keys at rest with them.
            with conn.transaction():
                groups = conn.execute(self._sql["idle_groups"], {"limit": limit}).fetchall()
                conn.execute(
                    self._sql["forget_idle"],
                    {
                        "queues": [q for q, _, _ in groups],
                        "priorities": [p for _, p, _ in groups],
                        "grps": [g for _, _, g in groups],
                        "limit": limit,
                        "now": now,
                    },
                )
            return conn.execute(self._sql["expire"], {"limit": limit, "now": now}).rowcount

    # -- limits ------------------------------------------------------------------------------

    def set_limit(self, queue: str, rule: Rule) -> None:
        if rule.key != "":
            buckets.check_key(rule.key)
        checked = buckets.rule(
            rule.key or "queue",
            rule.rate if rule.rate > 0 else None,
            rule.burst if rule.rate > 0 else None,
            rule.concurrency or None,
        )
        with self._connect() as conn:
            conn.execute(
                self._sql["set_limit"],
                {
                    "queue": queue,
                    "key": rule.key,
                    "rate": checked.rate or None,
                    "burst": checked.burst if checked.rate else None,
                    "concurrency": checked.concurrency or None,
                    "channel": self.target.channel,
                    "now": None,
                },
            )

    def clear_limit(self, queue: str, key: str) -> bool:
        with self._connect() as conn:
            rows = conn.execute(
                self._sql["clear_limit"],
                {"queue": queue, "key": key, "channel": self.target.channel, "now": None},
            ).fetchall()
        return bool(rows)

    def limits(self, queue: str | None = None, now: float | None = None) -> list[LimitInfo]:
        with self._connect() as conn:
            rows = conn.execute(self._sql["limits"], {"queue": queue, "now": now}).fetchall()
        out = []
        for q, key, tat, running, closed, o_rate, o_burst, o_conc, declared, grouped, clock in rows:
            override = o_rate is not None or o_conc is not None
            if override:
                rate, burst, conc = o_rate or 0.0, o_burst or 1, o_conc or 0
            else:
                found = next((r for r in _rules(declared) if r.key == key), None)
                if found is None:
                    if not running:
                        continue  # nothing declares it, nothing holds it: nothing to show
                    rate, burst, conc = 0.0, 1, 0
                else:
                    rate, burst, conc = found.rate, found.burst, found.concurrency
            tokens = buckets.tokens(tat, clock, rate, burst) if rate > 0 else None
            shut = closed if closed is not None and closed > clock else None
            if not (
                override or running or grouped or shut is not None or (tokens is not None and tokens < burst)
            ):
                continue
            out.append(
                LimitInfo(
                    queue=q,
                    key=key,
                    rate=rate,
                    burst=burst,
                    concurrency=conc,
                    override=override,
                    running=running,
                    tokens=tokens,
                    closed_until=shut,
                )
            )
        return out

    # -- pause and resume --------------------------------------------------------------------

    def pause(self, queue: str, task: str | None = None, now: float | None = None) -> None:
        queue, stored = pause_target(queue, task)
        with self._connect() as conn, conn.transaction():
            conn.execute(self._sql["pause"], {"queue": queue, "task": stored, "now": now})
            conn.execute(self._sql["pause_barrier"], {"schema": self.target.ident, "queue": queue})

    def resume(self, queue: str, task: str | None = None) -> None:
        queue, stored = pause_target(queue, task)
        with self._connect() as conn:
            conn.execute(
                self._sql["resume"], {"queue": queue, "task": stored, "channel": self.target.channel}
            )

    def paused(self, queues: Sequence[str] | None = None) -> list[Pause]:
        with self._connect() as conn:
            rows = conn.execute(self._sql["paused"], {"queues": None if queues is None else list(queues)})
            return pauses(rows.fetchall())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, listeners, owned = self._pool, list(self._listeners), list(self._owned)
            self._pool, self._listeners, self._owned = None, [], []
        if self._pid != os.getpid():
            return  # forked: leave the parent's connections alone
        os.write(self._interrupt_w, b"!")  # ends the waits in progress
        for listener in listeners:
            with listener.lock:
                listener.close()
        if pool is not None:
            pool.close()
        for conn in owned:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        os.close(self._interrupt_r)
        os.close(self._interrupt_w)


def _rules(stored: Any) -> list[Rule]:
    """Declared rules as stored (jsonb, decoded by psycopg); a corrupt value as none."""
    try:
        return msgspec.convert(stored, list[Rule]) if stored is not None else []
    except (msgspec.ValidationError, TypeError):
        return []


def _leases(outcomes: Sequence[Outcome]) -> dict[str, list[Any]]:
    return {"ids": [o.id for o in outcomes], "tokens": [o.token for o in outcomes]}


def _error_json(error: dict[str, Any] | None) -> str:
    """An error record as jsonb text; jsonb cannot hold NUL characters, so they become U+FFFD."""
    return serializer.dumps(_without_nul(error)).decode()


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def _conflict(key: str | None, holder: str) -> KeyConflict:
    return KeyConflict(f"key {key!r} belongs to job {holder} with a different task or payload")


def _stored(m: Message) -> tuple[Any, ...]:
    """A message as ``resends`` compares a stored job."""
    return (m.queue, m.task, m.payload, m.priority, m.max_attempts, m.key)


def _columns(messages: Sequence[Message]) -> dict[str, list[Any]]:
    """Messages as the enqueue statements' column arrays (unnest'ed into rows)."""
    return {
        "ids": [m.id for m in messages],
        "tasks": [m.task for m in messages],
        "queues": [m.queue for m in messages],
        "priorities": [m.priority for m in messages],
        "payloads": [m.payload for m in messages],
        "delays": [float(m.delay) for m in messages],
        "run_ats": [None if m.run_at is None else float(m.run_at) for m in messages],
        "max_attempts": [m.max_attempts for m in messages],
    }


def _job(row: Sequence[Any]) -> JobInfo:
    """The server's clock (row[18]) decides ready or scheduled; jsonb errors arrive decoded;
    ``get`` adds the headers and progress (row[19], row[20])."""
    if len(row) > 20:
        return job_row(row, row[18], error_records(row[14]), row[19], row[20])
    return job_row(row, row[18], error_records(row[14]))
