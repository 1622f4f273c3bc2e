"""Failures of the store: dropped connections and a Redis restart; acks retried by token."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from fault_proxy import fault_proxy
from redis_servers import server

from conveyor.brokers.redis import RedisBroker
from conveyor.errors import StoreUnavailable
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome

FAIRNESS = (6, 3, 1)


def message(**fields) -> Message:
    return Message(id=new_id(), task="t", queue="q", priority=1, payload=b"[[],{}]", **fields)


def kill_clients(admin, name: str) -> int:
    """``CLIENT KILL`` every connection named ``name``; return how many."""
    ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
    for client_id in ids:
        admin.client_kill_filter(_id=client_id)
    return len(ids)


def test_operations_succeed_after_the_connection_is_killed(store_url, admin, open_redis):
    name = f"conveyor-test-{os.urandom(4).hex()}"
    broker = open_redis(f"{store_url}&client_name={name}")
    first = message()
    broker.enqueue([first])
    (d,) = broker.reserve(["q"], 10, 30.0, "w1", Fairness(FAIRNESS))
    broker.wait(["q"], timeout=0.01)  # a subscription too
    broker.stats(["q"])  # and a command connection

    assert kill_clients(admin, name) == 2

    second = message()
    assert broker.enqueue([second])[0].created
    assert [s.status for s in broker.ack([Outcome(d.id, d.token, "succeeded")])] == ["ok"]
    broker.wait(["q"], timeout=0.5)  # returns, subscribing again, rather than raising
    (again,) = broker.reserve(["q"], 10, 30.0, "w1", Fairness(FAIRNESS))
    assert again.id == second.id


def test_a_wait_returns_when_its_subscription_is_dropped(store_url, admin, open_redis):
    """Wake-ups published while a subscription is down are lost, so a wait whose connection
    breaks returns for its caller to look at the queue, instead of subscribing again inside the
    client and sleeping on past them."""
    name = f"conveyor-test-{os.urandom(4).hex()}"
    broker = open_redis(f"{store_url}&client_name={name}")
    subscribed, returned = threading.Event(), threading.Event()

    def wait() -> None:
        broker.wait(["q"], timeout=0.01)  # this thread's subscription
        subscribed.set()
        broker.wait(["q"], timeout=30.0)
        returned.set()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    assert subscribed.wait(10)
    started = time.monotonic()
    assert kill_clients(admin, name) >= 1

    assert returned.wait(10), "the wait slept on after its subscription was dropped"
    assert time.monotonic() - started < 10


def test_a_restart_with_aof_always_keeps_acknowledged_work_and_acks_wait_for_it(tmp_path):
    """Redis SIGKILLed while an acknowledgement is pending (sent while it is down): the ack waits,
    retried with backoff, and lands once the server is back; nothing acknowledged is lost."""
    with server(tmp_path, "--appendonly", "yes", "--appendfsync", "always") as redis_server:
        broker = RedisBroker(f"redis://127.0.0.1:{redis_server.port}/0?retries=12", retention=3600.0)
        try:
            ids = [e.id for e in broker.enqueue([message() for _ in range(100)])]
            leased = broker.reserve(["q"], 10, 300.0, "w1", Fairness(FAIRNESS))

            redis_server.kill()  # a crash: only what was fsynced survives
            restart = threading.Timer(1.0, redis_server.start)
            restart.start()
            # The ack is sent while Redis is down: it is retried with backoff until it is back,
            # and its scripts are loaded again (a restarted Redis has none).
            statuses = broker.ack([Outcome(d.id, d.token, "succeeded") for d in leased])
            restart.join()

            assert [s.status for s in statuses] == ["ok"] * 10
            rest = broker.reserve(["q"], 200, 300.0, "w1", Fairness(FAIRNESS))
            assert sorted(d.id for d in [*leased, *rest]) == sorted(ids)
            # A retried ack (its reply lost) is refused by its spent token: no second effect.
            assert broker.ack([Outcome(leased[0].id, leased[0].token, "succeeded")])[0].status == "lost"
            assert broker.stats(["q"])[0].total("succeeded") == 10
        finally:
            broker.close()


def test_redis_killed_during_an_acknowledgement_keeps_it_and_its_retry_applies_nothing_twice(tmp_path):
    """Redis with ``appendfsync always`` SIGKILLed *during* an acknowledgement: after the ack
    script ran (and was written to the AOF) and before its reply reached the worker. Restarted,
    it still holds the ack; the client's resend finds the tokens spent and changes nothing; every
    enqueued job is still there."""
    with (
        server(tmp_path, "--appendonly", "yes", "--appendfsync", "always") as redis_server,
        fault_proxy("127.0.0.1", redis_server.port) as proxy,
    ):
        broker = RedisBroker(f"redis://{proxy.url_netloc()}/0?retries=12", retention=3600.0)
        try:
            ids = [e.id for e in broker.enqueue([message() for _ in range(100)])]
            first, *leased = broker.reserve(["q"], 11, 300.0, "w1", Fairness(FAIRNESS))
            outcomes = [Outcome(d.id, d.token, "succeeded") for d in leased]

            broker.ack([Outcome(first.id, first.token, "succeeded")])  # the ack script is loaded
            (aof,) = (tmp_path / "appendonlydir").glob("*.incr.aof")
            written = aof.stat().st_size
            proxy.trip_on(broker._scripts.sha["ack"].encode(), mute=True)  # its reply is held
            replies: list[object] = []
            acking = threading.Thread(target=lambda: replies.append(broker.ack(outcomes)))
            acking.start()
            assert proxy.tripped.wait(10)
            deadline = time.monotonic() + 10
            # The script ran and its writes reached the AOF (which a SIGKILL keeps): another
            # client may see a script's writes before they are written, so the file decides.
            while not _in_aof(aof, written, [d.id for d in leased]):
                assert time.monotonic() < deadline, "the ack never reached the AOF"
                time.sleep(0.01)
            redis_server.kill()  # the reply still in flight
            proxy.reset_connections()  # and lost with the connection
            redis_server.start()
            proxy.heal()  # the client sends the ack again
            acking.join(30)
            assert not acking.is_alive()

            (statuses,) = replies
            assert [s.status for s in statuses] == ["lost"] * 10  # already applied: refused
            assert broker.stats(["q"])[0].total("succeeded") == 11
            rest = broker.reserve(["q"], 200, 300.0, "w1", Fairness(FAIRNESS))
            assert sorted(d.id for d in [first, *leased, *rest]) == sorted(ids)
        finally:
            broker.close()


def _in_aof(aof: Path, offset: int, ids: list[str]) -> bool:
    """Whether the transaction written to ``aof`` after ``offset`` holds every job of ``ids``."""
    written = aof.read_bytes()[offset:]
    return written.endswith(b"EXEC\r\n") and all(job_id.encode() in written for job_id in ids)


def test_without_redis_the_error_comes_after_the_retries(tmp_path):
    with server(tmp_path) as redis_server:
        port = redis_server.port
    broker = RedisBroker(f"redis://127.0.0.1:{port}/0", retries=2)
    start = time.monotonic()
    try:
        broker.enqueue([message()])
    except StoreUnavailable as exc:
        assert f"127.0.0.1:{port}" in str(exc)
    else:
        raise AssertionError("enqueue succeeded without a server")
    finally:
        broker.close()
    assert time.monotonic() - start < 10
