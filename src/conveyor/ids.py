"""Job ids: time-ordered and unique without coordination (ULID layout, Crockford base32)."""

from __future__ import annotations

import os
import random
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every two-digit string, indexed by the 10 bits it encodes.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = range(120, -1, -10)

# Random bits from a generator seeded by the OS, reseeded in every forked child so that two
# processes never share a sequence: one syscall per process, not one per id.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def new_id() -> str:
    """26 characters: 48 bits of milliseconds then 80 random bits; sorts by creation time."""
    value = (time.time_ns() // 1_000_000) << 80 | _random.getrandbits(80)
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])
