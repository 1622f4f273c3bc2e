"""Retry policies: how many attempts, how long between them, which errors retry."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from conveyor.errors import ConfigurationError

Jitter = Literal["full", "equal", "none"]


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often a failed task runs again.

    The n-th retry waits ``min(max_delay, base * factor ** (n - 1))`` seconds, randomised by
    ``jitter``: ``"full"`` draws uniformly from [0, delay] (the default, which spreads a burst of
    failures), ``"equal"`` from [delay/2, delay], ``"none"`` uses the delay as is.

    Attributes:
        max_attempts: total runs allowed, the first included; 1 means never retry.
        base: delay before the first retry, in seconds.
        factor: growth of the delay per attempt.
        max_delay: cap on any single delay, in seconds.
        jitter: randomisation of the delay.
        retry_on: exception types that are retried; others go straight to the dead letter queue.
        give_up_on: exception types never retried, even if they match ``retry_on``.
    """

    max_attempts: int = 5
    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 3600.0
    jitter: Jitter = "full"
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))
    give_up_on: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        numbers = (self.base, self.factor, self.max_delay)
        if not all(type(n) in (int, float) and not math.isnan(n) for n in numbers) or math.isinf(
            self.base + self.factor
        ):
            raise ConfigurationError(
                f"base and factor must be finite numbers, max_delay a number, got {numbers!r}"
            )
        if not (self.base >= 0 and self.factor >= 1 and self.max_delay >= 0):
            raise ConfigurationError("need base >= 0, factor >= 1 and max_delay >= 0")
        if self.jitter not in ("full", "equal", "none"):
            raise ConfigurationError(f"jitter must be 'full', 'equal' or 'none', got {self.jitter!r}")
        for name in ("retry_on", "give_up_on"):
            kinds = getattr(self, name)
            if not isinstance(kinds, tuple) or not all(
                isinstance(k, type) and issubclass(k, BaseException) for k in kinds
            ):
                raise ConfigurationError(f"{name} must be a tuple of exception classes, got {kinds!r}")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            delay = min(self.max_delay, self.base * float(self.factor) ** max(attempt - 1, 0))
        except OverflowError:  # the uncapped delay is astronomically past any cap (unless base is 0)
            delay = self.max_delay if self.base else 0.0
        if self.jitter == "none":
            return delay
        draw = (rng or random).random()
        if self.jitter == "full":
            return delay * draw
        return delay / 2 + delay / 2 * draw

    def retries(self, exc: BaseException) -> bool:
        """Whether this kind of error may be retried at all."""
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.give_up_on)
