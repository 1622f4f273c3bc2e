"""One worker process: reserve batches, run them, report outcomes in batches, keep leases alive."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from conveyor.app import Conveyor
from conveyor.brokers.availability import one_line
from conveyor.brokers.base import Broker, Lease
from conveyor.errors import ConfigurationError, StoreUnavailable
from conveyor.metrics import Recorder
from conveyor.periodic import Schedule, plan
from conveyor.priority import Fairness, parse_queues
from conveyor.records import AckStatus, Delivery, Outcome, WorkerInfo
from conveyor.worker.acks import Acknowledger, Failed
from conveyor.worker.executor import Runner, cancelled, failure
from conveyor.worker.stall import StallWatch
from conveyor.worker.store_log import one_line_outages

log = logging.getLogger("conveyor.worker")
T = TypeVar("T")

#: Backoff of upkeep calls that fail: the first retry's delay, and the longest.
RETRY_FIRST, RETRY_CAP = 0.05, 5.0

#: Tasks are "fast" once this many runs in a row each took under FAST_RUN seconds; only then does
#: a worker reserve ahead of its free slots (see Worker._room).
FAST_RUN = 0.001
FAST_STREAK = 64
#: Backoff between attempts at the first heartbeat while the store is unavailable.
_FIRST_RETRY = 0.25
_LAST_RETRY = 5.0


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker process fetches and runs tasks.

    Attributes:
        queues: queues served, each ``"name"`` or ``"name:weight"`` (weight a whole number >= 1,
            default 1). Each priority level's share of a reservation is split across the queues
            by their weights, so equal queues get equal shares; priority levels span them.
        strict: serve the queues in the order listed instead: a queue only gets a level's
            slots that the queues before it cannot fill. Excludes weights.
        concurrency: tasks run at once. The worker reserves for its free slots only, except
            while every recent run was fast (under 1 ms each): then it reserves up to
            ``concurrency`` more, held in order to fill slots as they free, which doubles the
            batch per round trip. A held task waits behind at most ``concurrency`` fast tasks
            per slot, so an urgent task reserved next is held back by about a millisecond at
            most, never by a slow task; a slow run turns the look-ahead off at once.
        lease: seconds a reservation is valid without a heartbeat.
        heartbeat: seconds between lease extensions (default lease / 3).
        reclaim_interval: seconds between sweeps for expired leases (default lease / 2, at most 5).
        expire_interval: seconds between retention purges of finished jobs.
        grace: seconds a graceful stop waits for running tasks before releasing them.
        idle_wait: longest single wait for a wake-up before checking the store again.
        burst: drain, then stop (``conveyor worker --burst``): the worker stops by itself once
            it holds no job (none running, reserved or awaiting its acknowledgement) and its
            queues have no ready job and no scheduled one due within ``burst_wait`` seconds by
            the store's clock. Ready jobs that limits hold back count as ready (they start when
            the limit allows); those of a paused queue or task do not. Jobs running on other
            workers do not count, but expired leases (a crashed worker's) are reclaimed before
            the worker decides, and their jobs run. A burst worker plans no periodic ticks (a schedule is never
            done); ticks already enqueued run like any job.
        burst_wait: seconds ahead a scheduled job (a delay, a retry's backoff) keeps a burst
            worker serving, to run it when due; later ones stay for the next worker.
        unknown_task_window: seconds a job of a task this worker does not know is put back, its
            attempt not counted, for a worker that knows it (a rolling deploy: a new producer,
            an old worker), with delays of 1 s doubling to 60 s; then it goes to the dead letter
            queue with the reason and the registered names. 0: at once. The deferrals are
            counted with the job's RateLimited throttles (``Delivery.throttled``).
    """

    queues: Sequence[str] = ("default",)
    strict: bool = False
    concurrency: int = 16
    lease: float = 30.0
    heartbeat: float | None = None
    reclaim_interval: float | None = None
    expire_interval: float = 60.0
    grace: float = 30.0
    idle_wait: float = 5.0
    burst: bool = False
    burst_wait: float = 5.0
    unknown_task_window: float = 600.0
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def __post_init__(self) -> None:
        Fairness((1,), self.queue_weights, self.strict)  # refuses bad weights, weights with strict
        window = self.unknown_task_window
        if isinstance(window, bool) or not isinstance(window, int | float) or not 0 <= window < math.inf:
            raise ConfigurationError(f"unknown_task_window must be a number of seconds >= 0, got {window!r}")

    @property
    def queue_weights(self) -> dict[str, int]:
        """The queues served, in order, with their weights."""
        return parse_queues(self.queues)

    @property
    def queue_names(self) -> list[str]:
        """The queues served, in order, without their weights."""
        return list(self.queue_weights)

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat or self.lease / 3

    @property
    def reclaim_every(self) -> float:
        return self.reclaim_interval or min(self.lease / 2, 5.0)


class EffectsFailed(Exception):
    """A task's effects could not be committed with its acknowledgement."""


class Worker:
    """The fetch/run/ack loop of one process; ``await worker.run()`` until ``stop()``."""

    def __init__(
        self,
        app: Conveyor,
        config: WorkerConfig | None = None,
        observe: Callable[[list[tuple[Delivery, str]]], None] | None = None,
    ) -> None:
        """``observe``, if given, is called on the loop with each batch of deliveries that ended
        and how (``succeeded``, ``retry``, ``dead``, ``throttled``, ``lost``), once the store has
        taken their outcomes (conveyor.testing reports them)."""
        one_line_outages(log)
        self._observe = observe
        self.app = app
        self.config = config or WorkerConfig()
        self.id = self.config.worker_id
        self.fairness = Fairness(app.priorities.weights, self.config.queue_weights, self.config.strict)
        self.runner = Runner(
            app, self.id, self._finished_runs, self.config.concurrency, self.config.unknown_task_window
        )
        # One thread owns the store connection for the loop's calls, waits get their own, and
        # so do reservations and sweeps where the store takes writes in parallel (see
        # Broker.parallel_writes): then a batch of acks or a heartbeat never holds back the next
        # reservation, and a sweep that reads far (expired leases among a table's dead index
        # entries, a retention purge) never holds back the acks that make room for it.
        parallel, pool = app.broker.parallel_writes, concurrent.futures.ThreadPoolExecutor
        self._io = pool(1, thread_name_prefix="conveyor-io")
        self._fetcher = pool(1, thread_name_prefix="conveyor-fetch") if parallel else self._io
        self._sweeper = pool(1, thread_name_prefix="conveyor-sweep") if parallel else self._io
        self._waiter = pool(1, thread_name_prefix="conveyor-wait")
        # Heartbeats (lease extensions and the registry beat) never queue behind an ack, a
        # release, a periodic enqueue or a sweep: an ack waiting on a lock would otherwise cost
        # every task of this worker its lease. Their thread has a store connection of its own,
        # so they wait for no other thread's either. (On SQLite they still take turns with every
        # other writer for the one write lock.)
        self._beater = pool(1, thread_name_prefix="conveyor-beat", initializer=app.broker.own_connection)
        # Cancel requests for this worker's jobs wake a thread of their own, busy or idle
        # (docs/job-control.md); heartbeats ask for them too, in case a wake-up was lost.
        self._canceller = pool(1, thread_name_prefix="conveyor-cancel")
        #: Leases held, heartbeated until their outcome lands, by job id; each delivery carries
        #: its token. The store leases a job again only once its previous lease is gone, so a
        #: newer delivery of a job supersedes the older one here: one lease per job id.
        self.leases: dict[str, Delivery] = {}
        #: Deliveries running in this process, by job id: at most one run of a job at a time.
        #: An older run whose lease was lost stays here until it ends; it settles nothing of the
        #: newer delivery, whose pops check the token.
        self.running: dict[str, Delivery] = {}
        #: Reserved ahead of free slots while tasks are fast, in the order the store gave them.
        self.held: collections.deque[Delivery] = collections.deque()
        #: Deliveries of a job whose older run (its lease lost) still runs here, by job id: leased
        #: and heartbeated, started once that run ends.
        self.waiting: dict[str, Delivery] = {}
        self._fast_runs = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._outbox: list[Outcome] = []
        self._acks = Acknowledger(app, self._call)
        self._outbox_ready = asyncio.Event()
        #: Set whenever _room() may have grown: a lease settled or lost, or the look-ahead began.
        self._room_grew = asyncio.Event()
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._stopped = asyncio.Event()
        #: Counters for tests and status: started, succeeded, retried, dead, lost, throttled.
        self.counts: dict[str, int] = dict.fromkeys(
            ("started", "succeeded", "retry", "dead", "lost", "throttled", "snoozed", "cancelled"), 0
        )
        #: The finished ones per queue and priority level: ``outcomes[queue][str(level)][kind]``.
        self.outcomes: dict[str, dict[str, dict[str, int]]] = {}
        self.metrics = Recorder(app.priorities)
        self.started_at = time.time()
        #: Warns when an async task blocks the loop for a heartbeat interval (1 s at least, the
        #: lease at most; see stall.py); watches only an application that has async tasks.
        self._stall = StallWatch(
            min(self.config.lease, max(self.config.heartbeat_every, 1.0)),
            self.config.lease,
            {t.fn.__code__: t.name for t in app.tasks.values() if t.is_async and hasattr(t.fn, "__code__")},
            lambda task: [d.id for d in list(self.running.values()) if d.task == task],
        )

    def info(self) -> WorkerInfo:
        """How this worker reports itself in the store's worker registry."""
        return WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.config.queue_names,
            concurrency=self.config.concurrency,
            in_flight=len(self.leases),
            started_at=self.started_at,
            last_beat=time.time(),
            counts=dict(self.counts),
            outcomes={q: {p: dict(c) for p, c in per.items()} for q, per in self.outcomes.items()},
        )

    def stop(self, force: bool = False) -> None:
        """Ask the loop to stop: no new reservations, running tasks get ``grace`` seconds. With
        ``force`` (a second Ctrl-C), they get no more time: their outcomes are abandoned and
        their jobs released back to their queues at once, as when the grace runs out."""
        if force and not self._forced.is_set():
            log.warning("worker %s: forced stop: running tasks are released without waiting", self.id)
            self._forced.set()
        self._stopping.set()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _beat(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._beater, fn, *args)

    async def _sweep(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._sweeper, fn)

    async def run(self) -> None:
        """Serve until :meth:`stop`; then finish or release in-flight tasks and flush outcomes.

        Serving begins once the store has taken this worker's first heartbeat; while the store is
        unavailable that is retried with backoff. Raises ConfigurationError if the store refuses
        this worker (a wrong password, an unknown database): waiting cannot help.
        """
        broker = self.app.broker
        try:
            registered = await self._register()
        except BaseException:
            self._release_threads()
            raise
        if not registered:
            self._release_threads()
            log.info("worker %s stopped before its store answered", self.id)
            return
        order = " in strict order" if self.config.strict else ""
        log.info(
            "worker %s serving %s%s on %s", self.id, ",".join(self.config.queues), order, broker.display_url
        )
        upkeep = [
            asyncio.create_task(self._every(self.config.heartbeat_every, self._heartbeat)),
            asyncio.create_task(self._every(self.config.reclaim_every, self._reclaim)),
            asyncio.create_task(self._every(self.config.expire_interval, self._expire)),
            asyncio.create_task(self._watch_cancels()),
        ]
        schedules = [s for s in self.app.schedules if s.task.queue in self.config.queue_names]
        if schedules and not self.config.burst:
            upkeep.append(asyncio.create_task(self._periodic(schedules)))
        if self._stall.codes:  # only async tasks run on the loop; sync ones have threads
            upkeep.append(self._stall.start())
        flusher = asyncio.create_task(self._flush_loop())
        try:
            await self._fetch_loop()
        finally:
            await self._drain()
            self._stall.stop()
            for t in upkeep:
                t.cancel()
            await asyncio.gather(*upkeep, return_exceptions=True)
            self._stopped.set()
            self._outbox_ready.set()
            await flusher
            with contextlib.suppress(Exception):  # leave the registry at once, not after the ttl
                await self._call(broker.beat, self.info(), -1.0)
            self.runner.shutdown()
            self._waiter.shutdown(wait=False, cancel_futures=True)
            self._canceller.shutdown(wait=False, cancel_futures=True)
            for pool in dict.fromkeys((self._fetcher, self._sweeper, self._beater, self._io)):
                pool.shutdown(wait=True)
            log.info("worker %s stopped: %s", self.id, self.counts)

    async def _register(self) -> bool:
        """Send the first heartbeat, again and again while the store is unavailable, with one
        log line per attempt; False if asked to stop meanwhile."""
        broker, delay, attempt = self.app.broker, _FIRST_RETRY, 0
        while not self._stopping.is_set():
            attempt += 1
            try:
                await self._beat(broker.beat, self.info(), self.config.heartbeat_every * 3)
                return True
            except ConfigurationError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever the store says, wait it out
                cause = (
                    str(exc)
                    if isinstance(exc, StoreUnavailable)
                    else f"{broker.display_url}: {one_line(exc)}"
                )
                log.warning(
                    "worker %s waiting for its store (attempt %d, next in %.1f s): %s",
                    self.id,
                    attempt,
                    delay,
                    cause,
                )
                await self._until(asyncio.sleep(delay))
                delay = min(delay * 2, _LAST_RETRY)
        return False

    def _release_threads(self) -> None:
        self.runner.shutdown()
        for pool in dict.fromkeys(
            (self._waiter, self._canceller, self._fetcher, self._sweeper, self._beater, self._io)
        ):
            pool.shutdown(wait=False, cancel_futures=True)

    # -- fetching ----------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        broker = self.app.broker
        queues = self.config.queue_names
        backoff = 0.05
        while not self._stopping.is_set():
            free = self._room()
            if free <= 0:
                self._room_grew.clear()
                await self._until(self._room_grew.wait())
                continue
            try:
                batch = await asyncio.get_running_loop().run_in_executor(
                    self._fetcher, broker.reserve, queues, free, self.config.lease, self.id, self.fairness
                )
                backoff = 0.05
            except Exception:
                log.exception("reserve failed; retrying in %.2f s", backoff)
                await self._until(asyncio.sleep(backoff))
                backoff = min(backoff * 2, 5.0)
                continue
            self._hold(batch)
            self._fill()
            if len(batch) < free and not self._stopping.is_set():
                timeout = self.config.idle_wait
                if self.config.burst:
                    if await self._drained():
                        log.info(
                            "worker %s: burst done, nothing ready or due within %g s",
                            self.id,
                            self.config.burst_wait,
                        )
                        self.stop()
                        break
                    if self.leases:  # an ack settling wakes no store wait: look again soon
                        timeout = min(timeout, 0.05)
                wait = asyncio.get_running_loop().run_in_executor(self._waiter, broker.wait, queues, timeout)
                await self._until(wait)

    async def _drained(self) -> bool:
        """Whether a burst worker is done (see ``WorkerConfig.burst``)."""
        if self.leases or self._outbox:
            return False
        return await self._call(
            _nothing_due, self.app.broker, self.config.queue_names, self.config.burst_wait
        )

    async def _until(self, awaitable: Awaitable[Any]) -> None:
        """Await ``awaitable`` or the stop request, whichever comes first."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if work in done:
            exc = work.exception()
            if exc is not None:
                log.warning("wait failed: %s", exc)
                await asyncio.sleep(0.1)
        else:
            work.cancel()

    def _room(self) -> int:
        """How many tasks to reserve now: leases up to ``concurrency``, twice that while tasks
        are fast (the look-ahead). Leases count until the store has taken their outcome, so a
        worker killed while its acks are in flight has run at most that many tasks unacknowledged,
        however far reservations (on their own thread) ran ahead of the acks."""
        ahead = self.config.concurrency if self._fast_runs >= FAST_STREAK else 0
        return self.config.concurrency + ahead - len(self.leases)

    def _hold(self, batch: list[Delivery]) -> None:
        """Queue reserved deliveries to start, ahead of held ones of a lower priority level."""
        for delivery in batch:
            older = self.leases.get(delivery.id)
            if older is not None:
                self._superseded(self._unlease((older.id, older.token)))
            self.leases[delivery.id] = delivery
        lowest = self.held[-1].priority if self.held else None
        self.held.extend(batch)
        if lowest is not None and batch and min(d.priority for d in batch) < lowest:
            self.held = collections.deque(sorted(self.held, key=lambda d: d.priority))  # stable

    def _fill(self) -> None:
        """Start held deliveries, in order, in the free slots."""
        started = []
        while self.held and len(self.running) < self.config.concurrency and not self._stopping.is_set():
            delivery = self.held.popleft()
            if delivery.id in self.running:  # its older run, lease lost, still goes on
                self.waiting[delivery.id] = delivery
                continue
            self.running[delivery.id] = delivery
            self.runner.start(delivery)
            started.append(delivery)
        if started:
            self.counts["started"] += len(started)
            self._idle.clear()
            self.metrics.started(started, time.time())

    def _finished_runs(self, batch: list[tuple[Delivery, Outcome, float]]) -> None:
        """Outcomes of runs that ended together: free their slots, send them to the store."""
        ran = []
        was_ahead = self._fast_runs >= FAST_STREAK
        for delivery, outcome, seconds in batch:
            current = self.running.get(delivery.id)
            if current is None or current.token != delivery.token:
                continue
            del self.running[delivery.id]
            ran.append((delivery, seconds))
            self._outbox.append(outcome)
            self._fast_runs = self._fast_runs + 1 if seconds < FAST_RUN else 0
            following = self.waiting.pop(delivery.id, None)
            if following is not None:
                self.held.appendleft(following)
        self.metrics.ran(ran)
        self._outbox_ready.set()
        self._fill()
        if not was_ahead and self._fast_runs >= FAST_STREAK:  # the look-ahead begins: room to reserve
            self._room_grew.set()
        if not self.running:
            self._idle.set()

    def _report(self, outcome: Outcome) -> None:
        self._outbox.append(outcome)
        self._outbox_ready.set()

    # -- outcomes ----------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        """Group commit: whatever finished while the previous flush ran goes in the next one."""
        backoff = RETRY_FIRST
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            if not self._outbox:
                if self._stopped.is_set():
                    return
                continue
            batch, self._outbox = self._outbox, []
            answered, failed = await self._acks.send(batch)
            if answered:
                settled = (self._settled(outcome, status) for outcome, status in answered)
                self._finished([done for done in settled if done is not None])
                self._room_grew.set()  # settled leases make room to reserve
            if failed:
                self._outbox[:0] = self._refused(failed)
                log.warning("%d outcomes not acknowledged; retrying in %.2f s", len(failed), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_CAP)
                self._outbox_ready.set()
                continue
            backoff = RETRY_FIRST
            if self._outbox or self._stopped.is_set():
                # Once stopped nothing else wakes this loop: look again, to flush or to return.
                self._outbox_ready.set()

    def _refused(self, failed: list[Failed]) -> list[Outcome]:
        """The outcomes to send again (see Acknowledger.again); a lease given up leaves the
        books, to expire and be reclaimed."""
        again, given_up = self._acks.again(failed, self._held, self.id, self.runner.rng)
        for lease in given_up:
            delivery = self._unlease(lease)
            if delivery is not None:
                self._finished([(delivery, "lost")])
        return again

    def _settled(self, outcome: Outcome, status: AckStatus) -> tuple[Delivery, str] | None:
        """Book an outcome the store answered; the delivery and how it ended, if it was ours."""
        if status.status == "effects_failed" and self._held((outcome.id, outcome.token)) is not None:
            log.warning("job %s: effects failed (%s); counted as a failed attempt", outcome.id, status.error)
            self._report(self._effects_failed(outcome, status.error or "effects failed"))
            return None
        delivery = self._unlease((outcome.id, outcome.token))
        kind = "lost" if status.status == "lost" else outcome.kind
        self.counts[kind] += 1
        if kind == "lost":
            log.warning("job %s: lease lost before its outcome landed; another worker owns it", outcome.id)
        return None if delivery is None else (delivery, kind)

    def _finished(self, ended: list[tuple[Delivery, str]]) -> None:
        if self._observe is not None and ended:
            self._observe(ended)
        for delivery, kind in ended:
            per_level = self.outcomes.setdefault(delivery.queue, {}).setdefault(str(delivery.priority), {})
            per_level[kind] = per_level.get(kind, 0) + 1
        self.metrics.finished(ended)

    def _effects_failed(self, outcome: Outcome, message: str) -> Outcome:
        delivery = self.leases[outcome.id]
        task = self.app.tasks.get(delivery.task)
        return failure(delivery, self.id, EffectsFailed(message), task, self.runner.rng)

    # -- upkeep ------------------------------------------------------------------------------

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` every ``seconds`` until cancelled. A failure is logged, one line with its
        cause, and retried after a backoff (50 ms doubling to 5 s, never longer than ``seconds``)
        that starts again after a success."""
        wait, backoff = seconds, RETRY_FIRST
        while True:
            await asyncio.sleep(wait)
            try:
                await job()
            except Exception as exc:  # upkeep carries on whatever the store raised
                wait = min(backoff, seconds)
                backoff = min(backoff * 2, RETRY_CAP)
                log.warning(
                    "%s failed (%s: %s); retrying in %.2f s", job.__name__[1:], type(exc).__name__, exc, wait
                )
                log.debug("%s failed", job.__name__[1:], exc_info=True)  # the traceback, when asked for
            else:
                wait, backoff = seconds, RETRY_FIRST

    async def _heartbeat(self) -> None:
        """Extend this worker's leases and record it in the worker registry; a failure of one
        does not skip the other."""
        beat: Exception | None = None
        try:
            await self._beat(self.app.broker.beat, self.info(), self.config.heartbeat_every * 3)
            self.metrics.heartbeat()
        except Exception as exc:  # noqa: BLE001 - raised again once the leases are extended
            beat = exc
        await self._extend()
        await self._cancel_requested()
        if beat is not None:
            raise beat

    async def _watch_cancels(self) -> None:
        """Wait for cancel requests for this worker's jobs on the store's wake-up channel; look
        which leases they are for at each wake-up (docs/job-control.md)."""
        loop = asyncio.get_running_loop()
        backoff = RETRY_FIRST
        while True:
            try:
                woken = await loop.run_in_executor(
                    self._canceller, self.app.broker.wait_cancel, self.id, self.config.idle_wait
                )
                if woken:
                    await self._cancel_requested()
                backoff = RETRY_FIRST
            except Exception as exc:  # noqa: BLE001 - the heartbeat's look stands in meanwhile
                log.warning("waiting for cancel requests failed (%s: %s)", type(exc).__name__, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_CAP)

    async def _cancel_requested(self) -> None:
        """Stop the runs whose job a cancel request reached: running ones through the runner,
        reserved ones not started yet at once (reported cancelled)."""
        leases = [(d.id, d.token) for d in self.leases.values()]
        if not leases:
            return
        marked = await self._beat(self.app.broker.cancelling, leases)
        for job_id, grace in marked.items():
            delivery = self.leases.get(job_id)
            if delivery is None or (job_id, delivery.token) not in leases:
                continue
            running = self.running.get(job_id)
            if running is not None and running.token == delivery.token:
                if self.runner.cancel((job_id, delivery.token), grace):
                    log.info("job %s: cancel requested; stopping it (grace %.1f s)", job_id, grace)
            elif self.waiting.get(job_id) is delivery or delivery in self.held:
                self._drop_unstarted(delivery)
                self._report(cancelled(delivery, self.id, "cancelled before it started here"))

    async def _extend(self) -> None:
        leases = [(d.id, d.token) for d in self.leases.values()]
        if not leases:
            return
        lost = await self._beat(self.app.broker.extend, leases, self.config.lease)
        sent = dict(leases)  # the tokens extended: a newer lease may have come meanwhile
        for job_id in lost:
            delivery = self._unlease((job_id, sent[job_id]))
            if delivery is not None:
                self._drop_unstarted(delivery)
                self._room_grew.set()  # room to reserve in its place
                self._finished([(delivery, "lost")])
                log.warning("job %s: lease lost (expired and reclaimed); its outcome will be refused", job_id)

    def _held(self, lease: Lease) -> Delivery | None:
        """The delivery of ``lease`` if that very lease (job id and token) is on the books."""
        delivery = self.leases.get(lease[0])
        return delivery if delivery is not None and delivery.token == lease[1] else None

    def _unlease(self, lease: Lease) -> Delivery | None:
        """Take ``lease`` off the books (nothing if it is no longer there); its delivery."""
        delivery = self._held(lease)
        if delivery is not None:
            del self.leases[lease[0]]
        return delivery

    def _drop_unstarted(self, delivery: Delivery) -> None:
        """Forget a delivery that had not started (held or waiting): it is no longer ours."""
        if self.waiting.get(delivery.id) is delivery:
            del self.waiting[delivery.id]
        elif delivery in self.held:
            self.held.remove(delivery)

    def _superseded(self, delivery: Delivery | None) -> None:
        """The store leased this job again: the older lease here is lost; a run of it goes on
        (its outcome will be refused) and the newer delivery waits for it to end."""
        if delivery is None:
            return
        self._drop_unstarted(delivery)
        self._finished([(delivery, "lost")])
        log.warning(
            "job %s: leased again after its lease here was lost; the older run's outcome will be refused",
            delivery.id,
        )

    async def _reclaim(self) -> None:
        reclaimed = await self._sweep(self.app.broker.reclaim)
        self.metrics.reclaimed(len(reclaimed.requeued), len(reclaimed.dead))
        if reclaimed.requeued or reclaimed.dead:
            log.warning(
                "reclaimed expired leases: %d requeued, %d dead (worker lost)",
                len(reclaimed.requeued),
                len(reclaimed.dead),
            )

    async def _expire(self) -> None:
        while await self._sweep(self.app.broker.expire) >= 1000:
            pass

    async def _periodic(self, schedules: list[Schedule]) -> None:
        """Keep every schedule's next tick enqueued; wake again right after the earliest tick.
        Ticks are planned on the store's clock, which decides when they are due: a worker whose
        own clock is off would plan ticks of the past (run at once) or of the future."""
        starting = True
        while True:
            try:
                now = await self._call(self.app.broker.time)
                read = time.monotonic()
                messages = plan(schedules, now, starting, self.app.retention)
                for queue in dict.fromkeys(m.queue for m in messages):  # a keyed batch: one queue
                    await self._call(self.app.broker.enqueue, [m for m in messages if m.queue == queue])
                starting = False
                wake = min(s.next_after(now) for s in schedules)
                # Clocks differ in offset, not in rate: the wait is timed on this host's.
                await asyncio.sleep(max(0.0, wake - now - (time.monotonic() - read)) + 0.001)
            except Exception:
                log.exception("enqueueing periodic ticks failed; retrying in 1 s")
                await asyncio.sleep(1.0)

    # -- stopping ----------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Release held tasks at once; give running ones ``grace`` seconds, then release the rest.
        A released task goes back to its queue without counting an attempt."""
        held = [(d.id, d.token) for d in (*self.held, *self.waiting.values())]
        self.held.clear()
        self.waiting.clear()
        if held:
            log.info("released %d reserved tasks that had not started", await self._release(held))
        if self.running and not self._forced.is_set():
            log.info("waiting up to %.0f s for %d running tasks", self.config.grace, len(self.running))
            idle = asyncio.ensure_future(self._idle.wait())
            forced = asyncio.ensure_future(self._forced.wait())
            await asyncio.wait({idle, forced}, timeout=self.config.grace, return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            forced.cancel()
        unfinished = [(d.id, d.token) for d in self.running.values()]
        stopping = set(self.runner.cancelling(unfinished))
        for delivery in self.running.values():
            if (delivery.id, delivery.token) in stopping:  # they end cancelled, not back in their queue
                self._report(cancelled(delivery, self.id, "cancelled while running; the worker stopped"))
        unfinished = [lease for lease in unfinished if lease not in stopping]
        self.runner.abandon([*unfinished, *stopping])
        self.running.clear()
        if unfinished:
            log.warning("released %d unfinished tasks back to their queues", await self._release(unfinished))

    async def _release(self, candidates: list[Lease]) -> int:
        """Give back those of ``candidates`` still held; how many went back to their queues."""
        leases = [lease for lease in candidates if self._unlease(lease) is not None]
        if not leases:
            return 0
        try:
            return await self._call(self.app.broker.release, leases)
        except Exception as exc:  # noqa: BLE001 - the stop goes on: their leases expire instead
            log.warning(
                "releasing %d tasks failed (%s: %s); they are reclaimed when their leases expire",
                len(leases),
                type(exc).__name__,
                exc,
            )
            return 0


def _nothing_due(broker: Broker, queues: Sequence[str], within: float) -> bool:
    """No job of ``queues`` is ready (but for paused ones) or scheduled to be due within
    ``within`` seconds of the store's clock, once expired leases are reclaimed (a crashed
    worker's jobs are due again, or dead)."""
    if broker.reclaim().requeued:
        return False
    now = broker.time()
    pauses = broker.paused(queues)
    stopped = {p.queue for p in pauses if p.task is None}
    for stats in broker.stats(queues, now=now):
        if stats.queue in stopped:
            continue
        ready = stats.total("ready")
        for task in {p.task for p in pauses if p.queue == stats.queue and p.task is not None}:
            ready -= len(broker.jobs(queue=stats.queue, state="ready", task=task, limit=ready, now=now))
        if ready > 0:
            return False
        if stats.total("scheduled"):
            first = broker.jobs(queue=stats.queue, state="scheduled", limit=1, now=now)
            if first and first[0].run_at <= now + within:
                return False
    return True
