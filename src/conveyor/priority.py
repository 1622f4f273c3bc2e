"""Priority levels and the fair split of a reservation across them.

A queue has ordered levels, most urgent first (default ``high``, ``normal``, ``low`` with
weights 6:3:1). A priority is stored as the level's index: 0 is the most urgent. A reservation
of n tasks is split across the levels that have ready tasks with smooth weighted round robin,
so each level gets its weight's share of the slots, an empty level's share goes to the
others, a newly non-empty urgent level is served first, and no level with a weight starves even
when workers reserve one task at a time. Each level's share is then split across the queues a
worker serves, by the queues' weights (equal by default) or in strict order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from conveyor.errors import ConfigurationError

DEFAULT_LEVELS: Mapping[str, int] = {"high": 6, "normal": 3, "low": 1}


class Priorities:
    """The named, weighted levels of an application, most urgent first."""

    def __init__(self, levels: Mapping[str, int] = DEFAULT_LEVELS) -> None:
        if not levels:
            raise ConfigurationError("at least one priority level is needed")
        for name, weight in levels.items():
            if not isinstance(weight, int) or weight < 1:
                raise ConfigurationError(f"priority {name!r}: weight must be an int >= 1, got {weight!r}")
        self.names: tuple[str, ...] = tuple(levels)
        self.weights: tuple[int, ...] = tuple(levels.values())

    def __len__(self) -> int:
        return len(self.names)

    def resolve(self, priority: str | int) -> int:
        """The level index of a name or an index; raises ConfigurationError if unknown."""
        if isinstance(priority, bool):
            raise ConfigurationError(f"invalid priority {priority!r}")
        if isinstance(priority, int):
            if 0 <= priority < len(self.names):
                return priority
            raise ConfigurationError(
                f"invalid priority {priority}: levels are 0..{len(self.names) - 1} ({', '.join(self.names)})"
            )
        try:
            return self.names.index(priority)
        except ValueError:
            raise ConfigurationError(
                f"invalid priority {priority!r}: choose one of {', '.join(self.names)} or an index"
            ) from None

    def name(self, level: int) -> str:
        """The name of a level index (the index itself if out of range)."""
        return self.names[level] if 0 <= level < len(self.names) else str(level)


def parse_queues(spec: Iterable[str]) -> dict[str, int]:
    """Queue names with optional weights, ``"name"`` or ``"name:weight"``, as {name: weight}.

    A weight is a whole number >= 1 after the last colon (default 1); a queue whose own name ends
    in a colon and digits is written with its weight (``"v:2:1"``). Raises ConfigurationError
    for an empty list, a repeated queue or a bad weight.
    """
    weights: dict[str, int] = {}
    for item in spec:
        name, colon, tail = item.strip().rpartition(":")
        number = tail.removeprefix("-")
        if not colon or not (number.isascii() and number.isdigit()):
            name, weight = item.strip(), 1
        else:
            weight = int(tail)
        if not name:
            raise ConfigurationError(f"invalid queue {item!r}: expected NAME or NAME:WEIGHT")
        if weight < 1:
            raise ConfigurationError(f"queue {name!r}: weight must be >= 1, got {weight}")
        if name in weights:
            raise ConfigurationError(f"queue {name!r} is listed twice")
        weights[name] = weight
    if not weights:
        raise ConfigurationError("at least one queue is needed")
    return weights


def round_robin(weights: Sequence[int], current: list[int], left: Sequence[int], n: int) -> list[int]:
    """Deal ``n`` slots by smooth weighted round robin to the entries that have some ``left``.

    ``current`` is the round robin's state, updated in place: kept across calls, it gives each
    entry its weight's share of the slots even when one slot is dealt at a time. An entry with
    nothing left drops out and its state resets, so it does not bank slots while empty.
    """
    left = list(left)
    take = [0] * len(weights)
    for _ in range(n):
        total = 0
        best = -1
        for i, weight in enumerate(weights):
            if left[i] <= 0:
                current[i] = 0
                continue
            current[i] += weight
            total += weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            break
        current[best] -= total
        take[best] += 1
        left[best] -= 1
    return take


class Fairness:
    """How one worker splits its reservations, kept across them: across priority levels by
    their weights, then each level's share across the queues it serves.

    Queues share a level's slots by their weights (default 1 each: equal shares) with the same
    smooth weighted round robin as the levels, so a worker reserving one slot at a time still
    serves every listed queue in proportion. ``strict``: queues are served in the order listed,
    a queue only once the ones before it have no due job at that level.

    ``split`` and ``deal`` are deterministic: given the same history they give the same answer,
    which keeps tests free of randomness.
    """

    def __init__(
        self, weights: Sequence[int], queues: Mapping[str, int] | None = None, strict: bool = False
    ) -> None:
        self.weights = tuple(weights)
        self.current = [0] * len(self.weights)
        self.queue_weights: dict[str, int] = dict(queues or {})
        if strict and any(w != 1 for w in self.queue_weights.values()):
            raise ConfigurationError("queue weights and strict order exclude each other")
        for name, weight in self.queue_weights.items():
            if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
                raise ConfigurationError(f"queue {name!r}: weight must be an int >= 1, got {weight!r}")
        self.strict = strict
        #: The queues' round robin state per level: ``queue_current[level][queue]``.
        self.queue_current: list[dict[str, int]] = [{} for _ in self.weights]

    def split(self, available: Sequence[int], limit: int) -> list[int]:
        """How many tasks to take from each level, given how many each has ready."""
        return round_robin(self.weights, self.current, available, limit)

    def deal(self, level: int, n: int, queues: Sequence[str], available: Sequence[int]) -> list[int]:
        """How many of a level's ``n`` slots each of ``queues`` gets, given how many it has ready."""
        if self.strict:
            take = []
            for ready in available:
                take.append(min(n, max(0, ready)))
                n -= take[-1]
            return take
        state = self.queue_current[level]
        current = [state.get(q, 0) for q in queues]
        take = round_robin(self.queue_weights_of(queues), current, available, n)
        state.clear()
        state.update((q, c) for q, c in zip(queues, current, strict=True) if c)
        return take

    def queue_state(self, queues: Sequence[str]) -> list[int]:
        """The queues' round robin state as one list, level by level (for a store that deals)."""
        return [level.get(q, 0) for level in self.queue_current for q in queues]

    def set_queue_state(self, queues: Sequence[str], flat: Sequence[int]) -> None:
        """Take back the state a store dealt with, as ``queue_state`` gave it."""
        n = len(queues)
        for level, state in enumerate(self.queue_current):
            state.clear()
            state.update((q, c) for q, c in zip(queues, flat[level * n : (level + 1) * n], strict=True) if c)

    def queue_weights_of(self, queues: Sequence[str]) -> list[int]:
        """The weight of each of ``queues`` (1 unless given)."""
        return [self.queue_weights.get(q, 1) for q in queues]
