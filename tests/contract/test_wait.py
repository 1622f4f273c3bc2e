"""wait: idle workers sleep until a wake-up, the earliest due time or the timeout.

These use real time; bounds are generous, and wake-up latencies are measured from the event
that should end the wait, so an early return (always allowed) cannot make them flaky.
"""

from __future__ import annotations

import threading
import time

from .helpers import make_message

#: How soon after an enqueue or a due time a waiting worker must be back (backends may add a
#: fallback poll, but it must be slower than this to count as a wake-up).
PROMPT = 0.5


def wait_until(broker, queues, event_time: list[float], limit: float = 5.0) -> float:
    """Call ``wait`` until ``event_time`` (filled by another thread) has passed; return the
    delay from that event to the return of the last ``wait``."""
    deadline = time.time() + limit
    while time.time() < deadline:
        broker.wait(queues, timeout=max(0.0, deadline - time.time()))
        if event_time and time.time() >= event_time[0]:
            return time.time() - event_time[0]
    raise AssertionError(f"wait did not return within {limit}s of the event")


def enqueue_later(broker, delay: float, queue: str) -> tuple[threading.Thread, list[float]]:
    happened: list[float] = []

    def run() -> None:
        time.sleep(delay)
        happened.append(time.time())
        broker.enqueue([make_message(queue=queue)])

    thread = threading.Thread(target=run)
    thread.start()
    return thread, happened


def test_wait_returns_by_the_timeout_when_idle(broker):
    start = time.monotonic()
    broker.wait(["q"], timeout=0.3)
    assert time.monotonic() - start < 1.3


def test_wait_wakes_when_another_thread_enqueues(broker):
    thread, happened = enqueue_later(broker, 0.2, "q")

    latency = wait_until(broker, ["q"], happened)

    thread.join()
    assert latency < PROMPT


def test_wait_wakes_when_another_handle_enqueues(broker, open_handle):
    producer = open_handle()
    thread, happened = enqueue_later(producer, 0.2, "q")

    latency = wait_until(broker, ["q"], happened)

    thread.join()
    assert latency < PROMPT


def test_wait_wakes_for_the_queues_of_a_later_call(broker):
    broker.wait(["a"], timeout=0.01)
    thread, happened = enqueue_later(broker, 0.2, "b")

    latency = wait_until(broker, ["b"], happened)

    thread.join()
    assert latency < PROMPT


def test_wait_returns_at_the_earliest_due_time(broker):
    due = [time.time() + 0.3]
    broker.enqueue([make_message(delay=0.3), make_message(delay=30)])

    latency = wait_until(broker, ["q"], due)

    assert latency < PROMPT
