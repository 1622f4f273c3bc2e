"""Bounded waits of the Redis backend: a reply that never comes ends after socket_timeout
(not retried: the call may have run), while a wake-up wait longer than socket_timeout is fine."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fault_proxy import fault_proxy

from conveyor.brokers.redis import RedisBroker
from conveyor.errors import StoreUnavailable


def test_a_reply_that_never_comes_ends_after_socket_timeout(store_url: str) -> None:
    with fault_proxy("127.0.0.1", 6379) as proxy:
        broker = RedisBroker(store_url.replace("127.0.0.1:6379", proxy.url_netloc()) + "&socket_timeout=0.5")
        try:
            broker.stats(["q"])
            proxy.mode = "blackhole"
            start = time.monotonic()
            with pytest.raises(StoreUnavailable, match="Timeout"):
                broker.stats(["q"])
            assert 0.4 < time.monotonic() - start < 1.5
            proxy.heal()
            broker.stats(["q"])
        finally:
            broker.close()


def test_a_wait_may_outlast_socket_timeout(open_redis: Callable[..., RedisBroker], store_url: str) -> None:
    broker = open_redis(store_url + "&socket_timeout=0.3")
    broker.wait(["q"], timeout=0.01)  # subscribes
    start = time.monotonic()
    broker.wait(["q"], timeout=1.0)
    assert 0.9 < time.monotonic() - start < 2.0, "the wait ended early (a read timeout)"
    assert getattr(broker._local, "sub", None) is not None, "the subscription was dropped"
