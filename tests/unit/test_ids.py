"""Job ids: ULID layout, time-ordered, and distinct across forked processes."""

from __future__ import annotations

import os
import time

from conveyor.ids import new_id

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def test_ids_are_26_crockford_digits_with_the_millisecond_first() -> None:
    before = time.time_ns() // 1_000_000
    job_id = new_id()
    after = time.time_ns() // 1_000_000
    assert len(job_id) == 26 and set(job_id) <= CROCKFORD
    value = 0
    for digit in job_id:
        value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(digit)
    assert before <= value >> 80 <= after


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
