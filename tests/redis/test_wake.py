"""Wake-ups without polling: a waiting worker returns promptly after an enqueue from another
connection, and at a delayed task's due time. Bounds are loose: the machine is shared."""

from __future__ import annotations

import threading
import time

from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message

PROMPT = 1.0


def message(queue: str = "q", **fields) -> Message:
    return Message(
        id=new_id(), task="t", queue=queue, priority=fields.pop("priority", 1), payload=b"[[],{}]", **fields
    )


def test_a_waiting_worker_wakes_on_an_enqueue_from_another_connection(open_redis):
    worker, producer = open_redis(), open_redis()
    worker.wait(["q"], timeout=0.01)  # subscribes
    enqueued: list[float] = []

    def produce() -> None:
        time.sleep(0.3)
        enqueued.append(time.monotonic())
        producer.enqueue([message(priority=0)])

    thread = threading.Thread(target=produce)
    start = time.monotonic()
    thread.start()
    worker.wait(["q"], timeout=10.0)
    returned = time.monotonic()
    thread.join()

    assert returned - start < 5.0, "wait slept to its timeout"
    assert enqueued and returned - enqueued[0] < PROMPT
    assert len(worker.reserve(["q"], 10, 30.0, "w", Fairness((6, 3, 1)))) == 1


def test_a_waiting_worker_wakes_at_the_due_time_of_a_delayed_task(open_redis):
    worker, producer = open_redis(), open_redis()
    worker.wait(["q"], timeout=0.01)
    producer.enqueue([message(delay=0.5), message(delay=60)])
    due = time.monotonic() + 0.5
    calls = 0

    while time.monotonic() < due:  # the enqueue itself wakes it once: a new earliest due time
        worker.wait(["q"], timeout=10.0)
        calls += 1

    assert time.monotonic() - due < PROMPT
    assert calls <= 3, "wait polled instead of sleeping to the due time"
    assert len(worker.reserve(["q"], 10, 30.0, "w", Fairness((6, 3, 1)))) == 1


def test_an_enqueue_to_another_queue_does_not_wake(open_redis):
    worker, producer = open_redis(), open_redis()
    worker.wait(["q"], timeout=0.01)
    producer.enqueue([message(queue="elsewhere")])
    start = time.monotonic()

    worker.wait(["q"], timeout=0.5)

    assert time.monotonic() - start > 0.4


def test_close_ends_a_wait_in_progress(open_redis):
    worker = open_redis()
    failures: list[BaseException] = []

    def wait() -> None:
        try:
            worker.wait(["q"], timeout=0.01)
            worker.wait(["q"], timeout=30.0)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    worker.close()
    thread.join(PROMPT * 5)

    assert not thread.is_alive()
    assert failures == []
