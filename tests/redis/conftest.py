"""Redis-specific tests: a fresh key prefix per test on the real Redis, deleted at teardown."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from conveyor.brokers.redis import RedisBroker  # noqa: E402
from conveyor.brokers.redis.url import parse  # noqa: E402

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_SPECIFIC", "redis://127.0.0.1:6379/11")


def drop_prefix(url: str) -> None:
    """Delete every key of the store at ``url`` (its prefix)."""
    target = parse(url)
    client = redis.Redis.from_url(target.url)
    try:
        keys = list(client.scan_iter(match=f"{target.prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def store_url() -> Iterator[str]:
    url = f"{REDIS_URL}?prefix=rt-{os.urandom(5).hex()}"
    yield url
    drop_prefix(url)


@pytest.fixture
def admin() -> Iterator[Any]:
    """A plain client of the test database, outside any broker."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def open_redis(store_url: str) -> Iterator[Callable[..., RedisBroker]]:
    """``open_redis(**options)``: a broker on the test's store (URL options as keywords)."""
    opened: list[RedisBroker] = []

    def open_(url: str | None = None, **options: Any) -> RedisBroker:
        opened.append(RedisBroker(url or store_url, retention=3600.0, **options))
        return opened[-1]

    yield open_
    for broker in reversed(opened):
        broker.close()
