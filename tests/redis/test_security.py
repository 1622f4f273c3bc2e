"""Least privilege and TLS: the broker works as a restricted ACL user (the whole contract suite
runs that way as the ``redis-acl`` backend) and over ``rediss://`` to a TLS-only server."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.client import Redis
from redis.exceptions import NoPermissionError
from redis_servers import ACL_PASSWORD, ACL_USER, acl_server, tls_server

from conveyor import Conveyor
from conveyor.brokers.redis import RedisBroker
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome


def test_the_restricted_user_is_refused_what_it_does_not_need() -> None:
    user = Redis(port=acl_server().port, username=ACL_USER, password=ACL_PASSWORD)
    try:
        for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*")):
            with pytest.raises(NoPermissionError):
                user.execute_command(*command)
        with pytest.raises(NoPermissionError):
            user.set("someone-else:key", "1")  # outside its key pattern
        user.set("ct-own:key", "1")
        user.delete("ct-own:key")
    finally:
        user.close()


def test_a_worker_runs_tasks_as_the_restricted_user(tmp_path: Path, run_worker) -> None:
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{acl_server().port}/0?prefix=ct-app"
    app = Conveyor(url)

    @app.task
    def double(n: int) -> int:
        return 2 * n

    try:
        with run_worker(app):
            assert [double.enqueue(n).result(timeout=30) for n in range(5)] == [0, 2, 4, 6, 8]
    finally:
        app.close()


def test_rediss_to_a_tls_only_server(tmp_path: Path) -> None:
    with tls_server(tmp_path / "tls") as server:
        plain = Redis(port=server.port, socket_timeout=2)
        with pytest.raises(Exception):  # the server speaks only TLS
            plain.ping()
        plain.close()
        broker = RedisBroker(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={server.tls_ca}")
        try:
            [enqueued] = broker.enqueue(
                [Message(id=new_id(), task="t", queue="q", priority=0, payload=b"[[],{}]")]
            )
            [delivery] = broker.reserve(["q"], 10, 30.0, "w", Fairness((6, 3, 1)))
            assert delivery.id == enqueued.id
            [status] = broker.ack([Outcome(delivery.id, delivery.token, "succeeded", result=b"1")])
            assert status.status == "ok"
            info = broker.get(enqueued.id)
            assert info is not None and info.state == "succeeded"
        finally:
            broker.close()
