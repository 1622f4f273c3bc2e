"""Limits on SQLite: claims that respect rate and concurrency limits and take turns between groups.

Called inside the store's write transaction (SQLite has one writer at a time), so a claim reads
and updates the limits atomically with the jobs it claims. Semantics: docs/flow-control.md; the
tables: sqlite_schema.sql (conveyor_groups, conveyor_limits, conveyor_waiters).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from conveyor import limits
from conveyor.brokers.base import PARK_BUDGET
from conveyor.records import LimitInfo, Rule

INF = math.inf
_RETURNING = (
    "id, task, queue, priority, payload, attempt, max_attempts, token, run_at, enqueued_at, key, throttled,"
    " headers"
)
#: Claim of jobs without limits (today's claim; ``held`` names the queue's slot if it has one).
CLAIM_PLAIN = f"""
UPDATE conveyor_jobs
   SET state = 'running', attempt = attempt + 1, token = token + 1,
       lease_until = :now + :lease, worker = :worker, started_at = :now, held = :held
 WHERE rowid IN (SELECT rowid FROM conveyor_jobs
                  WHERE state = 'pending' AND queue = :queue AND priority = :priority AND run_at <= :now
                    AND grp IS NULL
                  ORDER BY run_at, rowid LIMIT :limit)
RETURNING {_RETURNING}
"""
_CLAIM_GROUP = f"""
UPDATE conveyor_jobs
   SET state = 'running', attempt = attempt + 1, token = token + 1,
       lease_until = :now + :lease, worker = :worker, started_at = :now, held = :held
 WHERE rowid IN (SELECT rowid FROM conveyor_jobs
                  WHERE state = 'pending' AND queue = :queue AND priority = :priority AND grp = :grp
                    AND run_at <= :now
                  ORDER BY run_at, rowid LIMIT :limit)
RETURNING {_RETURNING}
"""
_EARLIEST_IN_GROUP = (
    "SELECT min(run_at) FROM conveyor_jobs WHERE state = 'pending' AND queue = ? AND priority = ? AND grp = ?"
)
_PLAIN_DUE = (
    "SELECT 1 FROM conveyor_jobs WHERE state = 'pending' AND queue = ? AND priority = ? AND run_at <= ?"
    " AND grp IS NULL LIMIT 1"
)


class _Key:
    """One limit key's state and effective rule during a claim."""

    __slots__ = ("burst", "closed", "concurrency", "dirty", "override", "rate", "running", "tat")

    def __init__(self, row: Sequence[Any] | None) -> None:
        self.tat, self.running, self.closed = 0.0, 0, 0.0
        self.override = False
        self.rate, self.burst, self.concurrency = 0.0, 1, 0
        self.dirty = False
        if row is not None:
            self.tat, self.running, self.closed = float(row[0]), int(row[1]), float(row[2] or 0.0)
            if row[3] is not None:
                self.override = True
                self.rate, self.burst, self.concurrency = float(row[3]), int(row[4] or 1), int(row[5] or 0)

    def rule(self, declared: Rule | None) -> tuple[float, int, int]:
        if self.override or declared is None:
            return self.rate, self.burst, self.concurrency
        return declared.rate, declared.burst, declared.concurrency

    def allowance(self, declared: Rule | None, now: float) -> float:
        if self.closed > now:
            return 0
        rate, burst, concurrency = self.rule(declared)
        room = INF if concurrency <= 0 else concurrency - self.running
        return min(room, limits.tokens(self.tat, now, rate, burst))

    def until(self, declared: Rule | None, now: float) -> float:
        """When this key (with no allowance now) may allow one again; inf: when a slot frees."""
        if self.closed > now:
            return self.closed
        rate, burst, concurrency = self.rule(declared)
        if concurrency > 0 and self.running >= concurrency:
            return INF
        return limits.next_token(self.tat, now, rate, burst)

    def take(self, declared: Rule | None, now: float) -> bool:
        """Spend a token and hold a slot; whether the job holds a slot of this key."""
        rate, _, concurrency = self.rule(declared)
        self.tat = limits.spend(self.tat, now, rate, 1)
        self.dirty = True
        if concurrency > 0:
            self.running += 1
            return True
        return False


class Claim:
    """The limit state one reservation reads and writes, for one queue."""

    def __init__(self, db: sqlite3.Connection, queue: str, now: float) -> None:
        self.db, self.queue, self.now = db, queue, now
        self.keys: dict[str, _Key] = {}
        #: Paused tasks of the queue: their grouped jobs met at a group's head are parked.
        self.paused = {t for (t,) in db.execute("SELECT task FROM conveyor_paused WHERE queue = ?", (queue,))}
        self.park_budget = PARK_BUDGET

    def key(self, name: str) -> _Key:
        k = self.keys.get(name)
        if k is None:
            row = self.db.execute(
                "SELECT tat, running, closed_until, rate, burst, concurrency FROM conveyor_limits"
                " WHERE queue = ? AND key = ?",
                (self.queue, name),
            ).fetchone()
            k = self.keys[name] = _Key(row)
        return k

    def queue_allowance(self) -> float:
        """Starts the queue's own limit allows now (inf without one)."""
        q = self.key("")
        return q.allowance(None, self.now) if q.override else INF

    def save(self) -> None:
        rows = [(self.queue, name, k.tat, k.running) for name, k in self.keys.items() if k.dirty]
        if rows:
            self.db.executemany(
                "INSERT INTO conveyor_limits (queue, key, tat, running) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (queue, key) DO UPDATE SET tat = excluded.tat, running = excluded.running",
                rows,
            )

    def plain(self, priority: int, n: int, lease: float, worker: str) -> list[Any]:
        """Claim up to ``n`` jobs without limits of one level, FIFO, within the queue's limit."""
        q = self.key("")
        if q.override:
            n = min(n, int(q.allowance(None, self.now)))
            if n <= 0:
                return []
        held = '[""]' if q.override and q.concurrency > 0 else None
        rows = self.db.execute(
            CLAIM_PLAIN,
            {"now": self.now, "lease": lease, "worker": worker, "queue": self.queue, "priority": priority,
             "limit": n, "held": held},
        ).fetchall()  # fmt: skip
        if q.override:
            for _ in rows:
                q.take(None, self.now)
        return rows

    def _blocked(self, short: list[Rule]) -> tuple[float, list[str]]:
        """When a group whose ``short`` keys allow nothing may run, and the keys it waits on for
        a slot (then it waits until one is freed: inf)."""
        until = [(self.key(r.key).until(r, self.now), r.key) for r in short]
        return max(t for t, _ in until), [key for t, key in until if t == INF]

    def _head(
        self, grp: str, rules: list[Rule], priority: int, lease: float, worker: str, count: int
    ) -> list[Any]:
        """Claim the ``count`` oldest due jobs of a group, recording the slots they will hold."""
        held = [r.key for r in rules if self.key(r.key).rule(r)[2] > 0]
        q = self.key("")
        if q.override and q.concurrency > 0:
            held.append("")
        params = {"now": self.now, "lease": lease, "worker": worker, "queue": self.queue, "priority": priority,
                  "held": msgspec.json.encode(held).decode() if held else None}  # fmt: skip
        if grp == "":
            return self.db.execute(CLAIM_PLAIN, params | {"limit": count}).fetchall()
        if self.paused and not self._park(grp, priority, count):
            return []
        return self.db.execute(_CLAIM_GROUP, params | {"grp": grp, "limit": count}).fetchall()

    def _park(self, grp: str, priority: int, count: int) -> bool:
        """Park the due jobs of paused tasks among a group's first ``count`` due jobs, so the
        claim takes none; False if the call's parking budget ran out first (the group sits this
        call out, the next one parks on)."""
        while True:
            head = self.db.execute(
                "SELECT rowid, task FROM conveyor_jobs WHERE state = 'pending' AND queue = ? AND priority = ?"
                " AND grp = ? AND run_at <= ? ORDER BY run_at, rowid LIMIT ?",
                (self.queue, priority, grp, self.now, count),
            ).fetchall()
            held = [rowid for rowid, task in head if task in self.paused]
            if not held:
                return True
            held = held[: self.park_budget]
            marks = ",".join("?" * len(held))
            self.db.execute(f"UPDATE conveyor_jobs SET state = 'parked' WHERE rowid IN ({marks})", held)
            self.park_budget -= len(held)
            if self.park_budget <= 0:
                return False

    def _settle_turns(
        self, priority: int, served: dict[str, int], blocked: dict[str, tuple[float, list[str]]]
    ) -> None:
        """Store the served groups' new turns, and when the blocked ones may be claimable."""
        db, now, queue = self.db, self.now, self.queue
        if served:
            db.executemany(
                "INSERT INTO conveyor_groups (queue, priority, grp, turn, ready_at) VALUES (?, ?, ?, ?, 0)"
                " ON CONFLICT (queue, priority, grp) DO UPDATE SET turn = excluded.turn",
                [(queue, priority, grp, turn) for grp, turn in served.items()],
            )
            # A served group may have no due job left: it must not look claimable to `wait`.
            for grp in served:
                if grp and grp not in blocked:
                    due = _earliest(db, queue, priority, grp)
                    if due > now:
                        blocked[grp] = (due, [])
        for grp, (until, waiting_on) in blocked.items():
            db.execute(
                "UPDATE conveyor_groups SET ready_at = ? WHERE queue = ? AND priority = ? AND grp = ?",
                (until, queue, priority, grp),
            )
            db.executemany(
                "INSERT OR IGNORE INTO conveyor_waiters (queue, key, priority, grp) VALUES (?, ?, ?, ?)",
                [(queue, key, priority, grp) for key in waiting_on],
            )

    def turns(self, priority: int, n: int, lease: float, worker: str) -> list[Any]:
        """Claim up to ``n`` jobs of one level, groups (and the jobs without limits) taking turns."""
        db, now, queue = self.db, self.now, self.queue
        candidates = db.execute(
            "SELECT grp, rules, turn FROM conveyor_groups WHERE queue = ? AND priority = ? AND ready_at <= ?"
            " ORDER BY turn",
            (queue, priority, now),
        ).fetchall()
        if (
            not any(g == "" for g, _, _ in candidates)
            and db.execute(_PLAIN_DUE, (queue, priority, now)).fetchone()
        ):
            candidates.append(("", "[]", -1))
            candidates.sort(key=lambda c: c[2])
        last = db.execute(
            "SELECT coalesce(max(turn), 0) FROM conveyor_groups WHERE queue = ? AND priority = ?",
            (queue, priority),
        ).fetchone()[0]
        active = [(grp, _rules(grp, raw)) for grp, raw, _ in candidates]
        q = self.key("")
        rows: list[Any] = []
        served: dict[str, int] = {}
        blocked: dict[str, tuple[float, list[str]]] = {}
        while n > 0 and active:
            kept = []
            for grp, rules in active:
                if n <= 0:
                    kept.append((grp, rules))
                    continue
                if q.override and q.allowance(None, now) <= 0:
                    n = 0
                    kept.append((grp, rules))
                    continue
                allowances = [self.key(r.key).allowance(r, now) for r in rules]
                short = [r for r, a in zip(rules, allowances, strict=True) if a <= 0]
                if short:
                    blocked[grp] = self._blocked(short)
                    continue
                # Alone in its turn, a group takes what its keys allow in one claim.
                count = 1
                if len(active) == 1:
                    count = int(min([n, *allowances, q.allowance(None, now) if q.override else n]))
                got = self._head(grp, rules, priority, lease, worker, count)
                if not got:
                    if grp:
                        blocked[grp] = (_earliest(db, queue, priority, grp), [])
                    continue
                for _ in got:
                    for r in rules:
                        self.key(r.key).take(r, now)
                    if q.override:
                        q.take(None, now)
                rows += got
                n -= len(got)
                last += 1
                served[grp] = last
                kept.append((grp, rules))
            active = kept
        self._settle_turns(priority, served, blocked)
        return rows


def _earliest(db: sqlite3.Connection, queue: str, priority: int, grp: str) -> float:
    due = db.execute(_EARLIEST_IN_GROUP, (queue, priority, grp)).fetchone()[0]
    return INF if due is None else float(due)


_RULES = msgspec.json.Decoder(list[Rule])


def _rules(grp: str, raw: str) -> list[Rule]:
    """A group's declared rules, one per key of the group (a key without a stored rule, or a
    corrupt rules value, counts as unlimited unless a run-time limit names it)."""
    if not grp:
        return []
    try:
        stored = {r.key: r for r in _RULES.decode(raw)}
    except (msgspec.DecodeError, TypeError, ValueError):
        stored = {}
    return [stored.get(key) or Rule(key=key) for key in grp.split(limits.SEPARATOR)]


def has_limits(db: sqlite3.Connection, queue: str) -> bool:
    """Whether a claim in ``queue`` must go through the limits (one probe each)."""
    return (
        db.execute("SELECT 1 FROM conveyor_groups WHERE queue = ? LIMIT 1", (queue,)).fetchone() is not None
        or db.execute(
            "SELECT 1 FROM conveyor_limits WHERE queue = ? AND key = '' AND rate IS NOT NULL", (queue,)
        ).fetchone()
        is not None
    )


def grouped(db: sqlite3.Connection, queue: str, priority: int, rules: Sequence[Rule], due: float) -> str:
    """Record that a job of ``rules`` is pending at ``due`` in its group (enqueue); its group."""
    grp = limits.group_of(rules) or ""
    db.execute(
        "INSERT INTO conveyor_groups (queue, priority, grp, rules, ready_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (queue, priority, grp)"
        " DO UPDATE SET rules = excluded.rules, ready_at = min(ready_at, excluded.ready_at)",
        (queue, priority, grp, msgspec.json.encode(list(rules)).decode(), due),
    )
    return grp


def requeued(db: sqlite3.Connection, queue: str, priority: int, grp: str | None, due: float) -> None:
    """A grouped job is pending again at ``due`` (retry, throttle, reclaim, release, replay)."""
    if grp:
        db.execute(
            "INSERT INTO conveyor_groups (queue, priority, grp, ready_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (queue, priority, grp) DO UPDATE SET ready_at = min(ready_at, excluded.ready_at)",
            (queue, priority, grp, due),
        )


def free(db: sqlite3.Connection, queue: str, held: str | None, now: float) -> bool:
    """Give back the slots a job held; whether it held any (then waiting workers should wake)."""
    if not held:
        return False
    try:
        keys = msgspec.json.decode(held, type=list[str])
    except (msgspec.DecodeError, TypeError, ValueError):
        return False
    for key in keys:
        db.execute(
            "UPDATE conveyor_limits SET running = max(0, running - 1) WHERE queue = ? AND key = ?",
            (queue, key),
        )
        wake(db, queue, key, now)
    return bool(keys)


def wake(db: sqlite3.Connection, queue: str, key: str, now: float) -> None:
    """Make the groups waiting for a slot of ``key`` claimable again."""
    db.execute(
        "UPDATE conveyor_groups SET ready_at = ? WHERE ready_at > ? AND (queue, priority, grp) IN"
        " (SELECT queue, priority, grp FROM conveyor_waiters WHERE queue = ? AND key = ?)",
        (now, now, queue, key),
    )
    db.execute("DELETE FROM conveyor_waiters WHERE queue = ? AND key = ?", (queue, key))


def close_keys(db: sqlite3.Connection, queue: str, grp: str | None, until: float) -> None:
    """RateLimited: close every key of a group until ``until``."""
    if not grp:
        return
    db.executemany(
        "INSERT INTO conveyor_limits (queue, key, closed_until) VALUES (?, ?, ?) ON CONFLICT (queue, key)"
        " DO UPDATE SET closed_until = max(coalesce(closed_until, 0), excluded.closed_until)",
        [(queue, key, until) for key in grp.split(limits.SEPARATOR)],
    )


def set_limit(db: sqlite3.Connection, queue: str, rule: Rule, now: float) -> None:
    db.execute(
        "INSERT INTO conveyor_limits (queue, key, rate, burst, concurrency) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (queue, key) DO UPDATE SET rate = excluded.rate, burst = excluded.burst,"
        " concurrency = excluded.concurrency",
        (queue, rule.key, rule.rate, rule.burst, rule.concurrency),
    )
    _reopen(db, queue, rule.key, now)


def clear_limit(db: sqlite3.Connection, queue: str, key: str, now: float) -> bool:
    cleared = db.execute(
        "UPDATE conveyor_limits SET rate = NULL, burst = NULL, concurrency = NULL"
        " WHERE queue = ? AND key = ? AND rate IS NOT NULL",
        (queue, key),
    ).rowcount
    _reopen(db, queue, key, now)
    return bool(cleared)


def _reopen(db: sqlite3.Connection, queue: str, key: str, now: float) -> None:
    """A rule changed: every group it may concern is examined again at the next claim."""
    db.execute(
        "UPDATE conveyor_groups SET ready_at = ? WHERE queue = ? AND ready_at > ? AND ready_at < ?",
        (now, queue, now, INF),
    )
    wake(db, queue, key, now)
    if key == "":
        db.execute("DELETE FROM conveyor_waiters WHERE queue = ?", (queue,))
        db.execute(
            "UPDATE conveyor_groups SET ready_at = ? WHERE queue = ? AND ready_at = ?", (now, queue, INF)
        )


def earliest(db: sqlite3.Connection, queue: str, now: float) -> tuple[bool, float | None]:
    """For ``wait``: whether the queue's own limit blocks it (then the jobs' due times do not
    count), and the earliest time a group of the queue may be claimable."""
    row = db.execute(
        "SELECT tat, running, closed_until, rate, burst, concurrency FROM conveyor_limits"
        " WHERE queue = ? AND key = ''",
        (queue,),
    ).fetchone()
    q = _Key(row)
    if q.override and q.allowance(None, now) <= 0:
        until = q.until(None, now)
        return True, None if until == INF else until
    (ready,) = db.execute(
        "SELECT min(ready_at) FROM conveyor_groups WHERE queue = ? AND grp != '' AND ready_at < ?",
        (queue, INF),
    ).fetchone()
    return False, ready


def listing(db: sqlite3.Connection, queue: str | None, now: float) -> list[LimitInfo]:
    rows = db.execute(
        "SELECT queue, key, tat, running, closed_until, rate, burst, concurrency FROM conveyor_limits"
        " WHERE (:queue IS NULL OR queue = :queue)"
        " AND (rate IS NOT NULL OR running > 0 OR tat > :now OR closed_until > :now) ORDER BY queue, key",
        {"queue": queue, "now": now},
    ).fetchall()
    declared: dict[tuple[str, str], Rule] = {}
    for q in sorted({r[0] for r in rows}):
        for grp, raw in db.execute(
            "SELECT grp, rules FROM conveyor_groups WHERE queue = ? AND grp != ''", (q,)
        ):
            for r in _rules(grp, raw):
                declared.setdefault((q, r.key), r)
    out = []
    for q, key, tat, running, closed, rate, burst, concurrency in rows:
        state = _Key((tat, running, closed, rate, burst, concurrency))
        rule = declared.get((q, key))
        eff_rate, eff_burst, eff_conc = state.rule(rule)
        out.append(
            LimitInfo(
                queue=q,
                key=key,
                rate=eff_rate,
                burst=eff_burst,
                concurrency=eff_conc,
                override=state.override,
                running=running,
                tokens=limits.tokens(tat, now, eff_rate, eff_burst) if eff_rate > 0 else None,
                closed_until=closed if closed is not None and closed > now else None,
            )
        )
    return out


def keys_of(grps: Iterable[str | None]) -> set[str]:
    return {k for g in grps if g for k in g.split(limits.SEPARATOR)}


def held_back(db: sqlite3.Connection, queues: list[str], now: float) -> dict[str, int]:
    """Per queue: ready jobs of groups that wait (ready_at past ``now``), or -1 when the
    queue's own limit allows no start (then every ready job is held back)."""
    out: dict[str, int] = {}
    for q in queues:
        if earliest(db, q, now)[0]:
            out[q] = -1
            continue
        if db.execute("SELECT 1 FROM conveyor_groups WHERE queue = ? LIMIT 1", (q,)).fetchone() is None:
            continue
        (count,) = db.execute(
            "SELECT count(*) FROM conveyor_groups g JOIN conveyor_jobs j"
            " ON j.queue = g.queue AND j.priority = g.priority AND j.grp = g.grp"
            " WHERE g.queue = ? AND g.grp != '' AND g.ready_at > ? AND j.state = 'pending' AND j.run_at <= ?",
            (q, now, now),
        ).fetchone()
        out[q] = count
    return out


def forget_idle(db: sqlite3.Connection, now: float, limit: int) -> None:
    """Delete up to ``limit`` idle groups (no pending job: ready_at inf) and limit keys back to
    their resting state (full bucket, no slot held, no throttle, no run-time rule), so tenants
    seen once do not stay in the store for good."""
    db.execute(
        "DELETE FROM conveyor_groups WHERE rowid IN (SELECT g.rowid FROM conveyor_groups g"
        " WHERE g.ready_at = ? AND NOT EXISTS (SELECT 1 FROM conveyor_jobs j WHERE j.state = 'pending'"
        " AND j.queue = g.queue AND j.priority = g.priority AND j.grp = g.grp) LIMIT ?)",
        (INF, limit),
    )
    db.execute(
        "DELETE FROM conveyor_limits WHERE rowid IN (SELECT rowid FROM conveyor_limits WHERE rate IS NULL"
        " AND running = 0 AND tat <= ? AND coalesce(closed_until, 0) <= ? LIMIT ?)",
        (now, now, limit),
    )


def reopen_groups(db: sqlite3.Connection, queue: str, now: float) -> None:
    """A resume: jobs of the queue's groups may be back from parking, so every group is examined
    again at the next claim (one that still cannot run is set aside again there)."""
    db.execute("UPDATE conveyor_groups SET ready_at = ? WHERE queue = ? AND ready_at > ?", (now, queue, now))
