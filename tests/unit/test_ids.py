"""Job ids: ULID layout, time-ordered, and distinct across forked processes."""

from __future__ import annotations

import os
import time

from conveyor import ids
from conveyor.ids import new_id

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CROCKFORD = set(ALPHABET)


def test_ids_are_26_crockford_digits_with_the_millisecond_first() -> None:
    before = time.time_ns() // 1_000_000
    job_id = new_id()
    after = time.time_ns() // 1_000_000
    assert len(job_id) == 26 and set(job_id) <= CROCKFORD
    assert before <= decode(job_id) >> 80 <= after


def test_ids_sort_by_creation_time() -> None:
    first = new_id()
    time.sleep(0.002)
    assert new_id() > first


def test_forked_children_draw_different_random_bits() -> None:
    """A child inherits the parent's generator; it must be reseeded, or both make the same ids."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, ",".join(new_id()[10:] for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    mine = {new_id()[10:] for _ in range(100)}
    with os.fdopen(read) as pipe:
        theirs = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    assert len(theirs) == 100 and not mine & theirs


def decode(job_id: str) -> int:
    value = 0
    for digit in job_id:
        value = value * 32 + ALPHABET.index(digit)
    return value


def test_every_bit_lands_in_its_digit(monkeypatch) -> None:
    """The random half is encoded in two halves and the millisecond is reused within its
    millisecond: each id must still decode to exactly its clock and its random bits."""
    clock = [1_700_000_000_123_456_789]
    draws = iter([0, (1 << 80) - 1, 0x1234_5678_9ABC_DEF0_1357, 1 << 40, (1 << 40) - 1, 1 << 79])
    drawn: list[int] = []

    def bits(n: int) -> int:
        assert n == 80
        drawn.append(next(draws))
        return drawn[-1]

    monkeypatch.setattr(ids._random, "getrandbits", bits)
    monkeypatch.setattr(ids.time, "time_ns", lambda: clock[0])
    made = []
    for step in range(6):
        clock[0] += step % 2 * 1_000_000  # a new millisecond every other id
        made.append((clock[0] // 1_000_000, ids.new_id()))
    for (ms, job_id), random_bits in zip(made, drawn, strict=True):
        assert len(job_id) == 26
        assert decode(job_id) == ms << 80 | random_bits
