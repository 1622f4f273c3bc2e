"""Job ids: time-ordered and unique without coordination (ULID layout, Crockford base32)."""

from __future__ import annotations

import os
import random
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every two-digit string, indexed by the 10 bits it encodes.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]

# Random bits from a generator seeded by the OS, reseeded in every forked child so that two
# processes never share a sequence: one syscall per process, not one per id.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))

#: The last millisecond and its ten digits: ids made in the same millisecond share them. One
#: tuple, replaced whole, so threads never see a millisecond with another's digits.
_prefix = (-1, "")


def new_id() -> str:
    """26 characters: 48 bits of milliseconds then 80 random bits; sorts by creation time."""
    global _prefix
    ms = time.time_ns() // 1_000_000
    cached = _prefix
    if cached[0] != ms:
        cached = (ms, "".join([_PAIRS[(ms >> shift) & 1023] for shift in range(40, -1, -10)]))
        _prefix = cached
    bits = _random.getrandbits(80)
    high, low = bits >> 40, bits & 0xFF_FFFF_FFFF  # two 40-bit halves: four digit pairs each
    p = _PAIRS
    return (
        cached[1]
        + p[high >> 30] + p[(high >> 20) & 1023] + p[(high >> 10) & 1023] + p[high & 1023]
        + p[low >> 30] + p[(low >> 20) & 1023] + p[(low >> 10) & 1023] + p[low & 1023]
    )  # fmt: skip
