"""Priority levels and the fair split of a reservation across them.

A queue has ordered levels, most urgent first (default ``high``, ``normal``, ``low`` with
weights 6:3:1). A priority is stored as the level's index: 0 is the most urgent. A reservation
of n tasks is split across the levels that have ready tasks with smooth weighted round robin,
so each level gets its weight's share of the slots, an empty level's share goes to the
others, a newly non-empty urgent level is served first, and no level with a weight starves even
when workers reserve one task at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


class Fairness:
    """Smooth weighted round robin over priority levels; one per worker, kept across reservations.

    ``split`` is deterministic: given the same history it gives the same answer, which keeps
    tests free of randomness.
    """

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = tuple(weights)
        self.current = [0] * len(self.weights)

    def split(self, available: Sequence[int], limit: int) -> list[int]:
        """How many tasks to take from each level, given how many each has ready."""
        left = list(available)
        take = [0] * len(self.weights)
        for _ in range(limit):
            total = 0
            best = -1
            for level, weight in enumerate(self.weights):
                if left[level] <= 0:
                    self.current[level] = 0
                    continue
                self.current[level] += weight
                total += weight
                if best < 0 or self.current[level] > self.current[best]:
                    best = level
            if best < 0:
                break
            self.current[best] -= total
            take[best] += 1
            left[best] -= 1
        return take
