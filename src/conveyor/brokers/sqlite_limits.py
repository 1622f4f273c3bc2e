"""Limits on SQLite: claims that respect rate and concurrency limits and take turns between groups.

Called inside the store's write transaction (SQLite has one writer at a time), so a claim reads
and updates the limits atomically with the jobs it claims. Semantics: docs/flow-control.md; the
tables: sqlite_schema.sql (conveyor_groups, conveyor_limits, conveyor_waiters).
"""

from __future__ import annotations

import functools
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
#: Claim of jobs without limits (``held`` names the queue's slot if it has one, else NULL); the
#: claim of every queue without limits too.
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
_KEY_STATE = (
    "SELECT key, tat, running, closed_until, rate, burst, concurrency FROM conveyor_limits WHERE queue = ?"
)
#: A served group's turn, and when it may be claimable again if none of its jobs is due now (its
#: next due time, inf without pending jobs); one statement.
_SERVED = """
UPDATE conveyor_groups SET turn = :turn,
       ready_at = CASE WHEN d.due > :now THEN d.due ELSE conveyor_groups.ready_at END
  FROM (SELECT coalesce(min(run_at), :inf) AS due FROM conveyor_jobs
         WHERE state = 'pending' AND queue = :queue AND priority = :priority AND grp = :grp) AS d
 WHERE queue = :queue AND priority = :priority AND grp = :grp
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

    def take(self, declared: Rule | None, now: float, count: int = 1) -> None:
        """Spend ``count`` tokens and hold a slot for each (with a concurrency); a key whose
        state does not change (no rate, no concurrency) is not written back."""
        rate, _, concurrency = self.rule(declared)
        if rate > 0:
            self.tat = limits.spend(self.tat, now, rate, count)
            self.dirty = True
        if concurrency > 0:
            self.running += count
            self.dirty = True


class Claim:
    """The limit state one reservation reads and writes, for one queue."""

    def __init__(self, db: sqlite3.Connection, queue: str, now: float, paused: set[str]) -> None:
        self.db, self.queue, self.now = db, queue, now
        self.keys: dict[str, _Key] = {}
        #: Paused tasks of the queue: their grouped jobs met at a group's head are parked.
        self.paused = paused
        self.park_budget = PARK_BUDGET
        #: Per stored level, whether jobs without limits are due, and how many with limits are (up
        #: to one more than the reservation may take), as the reservation counted them.
        self.plain_due: dict[int, bool] = {}
        self.grouped_due: dict[int, int] = {}

    @classmethod
    def open(cls, db: sqlite3.Connection, queue: str, now: float, paused: set[str]) -> Claim | None:
        """The claim of a queue with limits (it has had groups, or has a limit of its own), or
        None: the queue claims as without limits. Two probes; the second reads the queue's key."""
        grouped = db.execute("SELECT 1 FROM conveyor_groups WHERE queue = ? LIMIT 1", (queue,)).fetchone()
        row = db.execute(_KEY_STATE + " AND key = ''", (queue,)).fetchone()
        if grouped is None and (row is None or row[4] is None):
            return None
        claim = cls(db, queue, now, paused)
        claim.keys[""] = _Key(None if row is None else row[1:])
        return claim

    def key(self, name: str) -> _Key:
        k = self.keys.get(name)
        if k is None:
            row = self.db.execute(_KEY_STATE + " AND key = ?", (self.queue, name)).fetchone()
            k = self.keys[name] = _Key(None if row is None else row[1:])
        return k

    def prefetch(self, names: Iterable[str]) -> None:
        """Read the state of the keys ``names`` not read yet, in one statement per 500."""
        wanted = [n for n in dict.fromkeys(names) if n not in self.keys]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(f"{_KEY_STATE} AND key IN ({marks})", (self.queue, *chunk)):
                self.keys[row[0]] = _Key(row[1:])
            for n in chunk:
                if n not in self.keys:
                    self.keys[n] = _Key(None)

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
        for grp, turn in served.items():
            if grp == "":
                db.execute(
                    "INSERT INTO conveyor_groups (queue, priority, grp, turn, ready_at) VALUES (?, ?, ?, ?, 0)"
                    " ON CONFLICT (queue, priority, grp) DO UPDATE SET turn = excluded.turn",
                    (queue, priority, grp, turn),
                )
            elif grp in blocked:
                db.execute(
                    "UPDATE conveyor_groups SET turn = ? WHERE queue = ? AND priority = ? AND grp = ?",
                    (turn, queue, priority, grp),
                )
            else:
                # A served group may have no due job left: it must not look claimable to `wait`.
                db.execute(
                    _SERVED,
                    {"turn": turn, "now": now, "inf": INF, "queue": queue, "priority": priority, "grp": grp},
                )
        for grp, (until, waiting_on) in blocked.items():
            db.execute(
                "UPDATE conveyor_groups SET ready_at = ? WHERE queue = ? AND priority = ? AND grp = ?",
                (until, queue, priority, grp),
            )
            if waiting_on:
                db.executemany(
                    "INSERT OR IGNORE INTO conveyor_waiters (queue, key, priority, grp) VALUES (?, ?, ?, ?)",
                    [(queue, key, priority, grp) for key in waiting_on],
                )

    def _candidates(self, priority: int) -> tuple[list[tuple[str, list[Rule]]], int | None, bool]:
        """The groups of a level that may be claimable now (with the jobs without limits, "",
        if any is due) in turn order, the last turn given in the level (None: not read), and
        whether the level has a single group."""
        db, now, queue = self.db, self.now, self.queue
        # With the last turn given in the level and whether the level has more than one group
        # (read once, as the first columns).
        candidates = db.execute(
            "SELECT (SELECT coalesce(max(turn), 0) FROM conveyor_groups WHERE queue = ?1 AND priority = ?2),"
            " (SELECT count(*) FROM (SELECT 1 FROM conveyor_groups WHERE queue = ?1 AND priority = ?2 LIMIT 2)),"
            " grp, rules, turn FROM conveyor_groups WHERE queue = ?1 AND priority = ?2 AND ready_at <= ?3"
            " ORDER BY turn",
            (queue, priority, now),
        ).fetchall()
        last: int | None = candidates[0][0] if candidates else None
        alone = bool(candidates) and candidates[0][1] == 1
        plain_due = self.plain_due.get(priority)
        if plain_due is None:
            plain_due = db.execute(_PLAIN_DUE, (queue, priority, now)).fetchone() is not None
        if plain_due and not any(c[2] == "" for c in candidates):
            candidates.append((last, 2, "", "[]", -1))
            candidates.sort(key=lambda c: c[4])
            alone = False
        return [(grp, _rules(grp, raw)) for _, _, grp, raw, _ in candidates], last, alone

    def turns(self, priority: int, n: int, lease: float, worker: str) -> list[Any]:
        """Claim up to ``n`` jobs of one level, groups (and the jobs without limits) taking turns."""
        db, now, queue = self.db, self.now, self.queue
        active, last, alone = self._candidates(priority)
        # The keys of the groups the first pass is likely to examine, read at once.
        self.prefetch(r.key for _, rules in active[:n] for r in rules)
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
                for r in rules:
                    self.key(r.key).take(r, now, len(got))
                if q.override:
                    q.take(None, now, len(got))
                rows += got
                n -= len(got)
                if last is None:
                    last = db.execute(
                        "SELECT coalesce(max(turn), 0) FROM conveyor_groups WHERE queue = ? AND priority = ?",
                        (queue, priority),
                    ).fetchone()[0]
                last += 1
                served[grp] = last
                kept.append((grp, rules))
            active = kept
        if (
            alone
            and not blocked
            and not self.paused
            and "" not in served
            and len(rows) < self.grouped_due.get(priority, 0)
        ):
            # The level's only group, served and still holding due jobs: its turn orders it
            # against no other group and its ready_at stays past, so nothing changes.
            return rows
        self._settle_turns(priority, served, blocked)
        return rows


def _earliest(db: sqlite3.Connection, queue: str, priority: int, grp: str) -> float:
    due = db.execute(_EARLIEST_IN_GROUP, (queue, priority, grp)).fetchone()[0]
    return INF if due is None else float(due)


_RULES = msgspec.json.Decoder(list[Rule])


@functools.lru_cache(maxsize=4096)
def _rules(grp: str, raw: str) -> list[Rule]:
    """A group's declared rules, one per key of the group (a key without a stored rule, or a
    corrupt rules value, counts as unlimited unless a run-time limit names it). Cached: the
    result is shared, never changed."""
    if not grp:
        return []
    try:
        stored = {r.key: r for r in _RULES.decode(raw)}
    except (msgspec.DecodeError, TypeError, ValueError):
        stored = {}
    return [stored.get(key) or Rule(key=key) for key in grp.split(limits.SEPARATOR)]


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


class Freed:
    """The slots the jobs leaving ``running`` in one write transaction held, given back together
    at its end: one update per key however many of its jobs were acknowledged (nothing in the
    transaction reads a key's running count in between)."""

    __slots__ = ("counts", "held")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        #: Per (queue, held list as stored): its jobs, decoded once at apply.
        self.held: dict[tuple[str, str], int] = {}

    def add(self, queue: str, held: str | None) -> None:
        """A job of ``queue`` left running holding the slots ``held`` (its JSON list of keys)."""
        if held:
            self.held[queue, held] = self.held.get((queue, held), 0) + 1

    def apply(self, db: sqlite3.Connection, now: float) -> set[str]:
        """Give the slots back; the queues whose waiting workers should wake: a group waited
        for one of the slots, or the queue's own limit freed one (its waits are not recorded)."""
        woken: set[str] = set()
        for (queue, held), count in self.held.items():
            try:
                keys = msgspec.json.decode(held, type=list[str])
            except (msgspec.DecodeError, TypeError, ValueError):
                continue
            for key in keys:
                self.counts[queue, key] = self.counts.get((queue, key), 0) + count
        self.held.clear()
        for (queue, key), n in self.counts.items():
            waited = db.execute(
                "UPDATE conveyor_limits SET running = max(0, running - ?) WHERE queue = ? AND key = ?"
                " RETURNING EXISTS (SELECT 1 FROM conveyor_waiters WHERE queue = ? AND key = ?)",
                (n, queue, key, queue, key),
            ).fetchone()
            if (waited is not None and waited[0] and wake(db, queue, key, now)) or key == "":
                woken.add(queue)
        self.counts.clear()
        return woken


def wake(db: sqlite3.Connection, queue: str, key: str, now: float) -> bool:
    """Make the groups waiting for a slot of ``key`` claimable again; whether there were any."""
    waiting = db.execute(
        "DELETE FROM conveyor_waiters WHERE queue = ? AND key = ? RETURNING priority, grp", (queue, key)
    ).fetchall()
    if waiting:
        db.executemany(
            "UPDATE conveyor_groups SET ready_at = ? WHERE queue = ? AND priority = ? AND grp = ? AND ready_at > ?",
            [(now, queue, priority, grp, now) for priority, grp in waiting],
        )
    return bool(waiting)


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


#: Idle groups: no job pending (ready_at inf, and none in the claim index), running or parked (a
#: retried, reclaimed, released or resumed job returns to its group, whose declared rules it needs).
_FORGET_GROUPS = """
DELETE FROM conveyor_groups WHERE rowid IN (
  SELECT g.rowid FROM conveyor_groups g
   WHERE g.ready_at = ?
     AND NOT EXISTS (SELECT 1 FROM conveyor_jobs j WHERE j.state = 'pending'
                      AND j.queue = g.queue AND j.priority = g.priority AND j.grp = g.grp)
     AND (g.queue, g.priority, g.grp) NOT IN (
           SELECT queue, priority, grp FROM conveyor_jobs WHERE state = 'running' AND grp IS NOT NULL
           UNION ALL
           SELECT queue, priority, grp FROM conveyor_jobs WHERE state = 'parked' AND grp IS NOT NULL)
   LIMIT ?)
"""


def forget_idle(db: sqlite3.Connection, now: float, limit: int) -> None:
    """Delete up to ``limit`` idle groups (no job pending, running or parked) and limit keys
    back to their resting state (full bucket, no slot held, no throttle, no run-time rule), so tenants
    seen once do not stay in the store for good."""
    db.execute(_FORGET_GROUPS, (INF, limit))
    db.execute(
        "DELETE FROM conveyor_limits WHERE rowid IN (SELECT rowid FROM conveyor_limits WHERE rate IS NULL"
        " AND running = 0 AND tat <= ? AND coalesce(closed_until, 0) <= ? LIMIT ?)",
        (now, now, limit),
    )


def reopen_groups(db: sqlite3.Connection, queue: str, now: float) -> None:
    """A resume: jobs of the queue's groups may be back from parking, so every group is examined
    again at the next claim (one that still cannot run is set aside again there)."""
    db.execute("UPDATE conveyor_groups SET ready_at = ? WHERE queue = ? AND ready_at > ?", (now, queue, now))
