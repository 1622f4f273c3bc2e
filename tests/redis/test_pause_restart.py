"""Pauses, and the jobs a paused task had parked, survive a Redis restart where Redis persists."""

from __future__ import annotations

from redis_servers import server

from conveyor.brokers.redis import RedisBroker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message

FAIRNESS = (6, 3, 1)


def message(task: str, queue: str = "q") -> Message:
    return Message(id=new_id(), task=task, queue=queue, priority=1, payload=b"[[],{}]")


def test_pauses_and_parked_jobs_survive_a_restart_with_aof(tmp_path):
    with server(tmp_path, "--appendonly", "yes", "--appendfsync", "always") as redis_server:
        url = f"redis://127.0.0.1:{redis_server.port}/0?retries=12"
        broker = RedisBroker(url, retention=3600.0)
        try:
            parked = [message("a") for _ in range(5)]
            free = message("b")
            held = message("c", queue="held")
            broker.enqueue([*parked, free])
            broker.enqueue([held])
            broker.pause("q", task="a")
            broker.pause("held")
            assert [d.id for d in broker.reserve(["q"], 10, 30.0, "w", Fairness(FAIRNESS))] == [free.id]
        finally:
            broker.close()

        redis_server.kill()  # a crash: what was fsynced survives
        redis_server.start()

        broker = RedisBroker(url, retention=3600.0)
        try:
            assert [(p.queue, p.task) for p in broker.paused()] == [("held", None), ("q", "a")]
            assert broker.reserve(["q", "held"], 10, 30.0, "w", Fairness(FAIRNESS)) == []
            assert broker.stats(["q"])[0].total("ready") == 5
            broker.resume("q", task="a")
            broker.resume("held")
            got = broker.reserve(["q", "held"], 10, 30.0, "w", Fairness(FAIRNESS))
            assert sorted(d.id for d in got) == sorted(m.id for m in [*parked, held])
        finally:
            broker.close()
