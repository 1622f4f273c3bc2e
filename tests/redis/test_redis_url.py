"""URLs: Conveyor's options, TLS, and credentials that never reach logs, reprs or errors."""

from __future__ import annotations

import logging

import pytest
from redis.connection import SSLConnection

from conveyor.brokers import open_broker
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis.url import parse
from conveyor.errors import ConfigurationError
from conveyor.ids import new_id
from conveyor.records import Message

SECRET = "s3cr3t-pw"


def test_prefix_and_cluster_are_ours_the_rest_is_redis_pys():
    target = parse(f"redis://app:{SECRET}@host:6380/2?prefix=billing&socket_timeout=5")

    assert (target.prefix, target.cluster) == ("billing", False)
    assert target.url == f"redis://app:{SECRET}@host:6380/2?socket_timeout=5"
    assert SECRET not in target.display
    assert SECRET not in repr(target)
    assert parse("redis://h:1?cluster=1").cluster


@pytest.mark.parametrize(
    "url",
    [
        f"redis://u:{SECRET}@h:1/0?prefix=bad{{tag}}",
        f"redis://u:{SECRET}@h:1/0?cluster=maybe",
        f"redis://u:{SECRET}@h:1/3?cluster=1",
        f"http://u:{SECRET}@h:1/0",
    ],
)
def test_invalid_urls_are_refused_without_the_password(url):
    with pytest.raises(ConfigurationError) as info:
        parse(url)

    assert SECRET not in str(info.value)


def test_password_is_absent_from_repr_str_and_display_url():
    broker = RedisBroker(f"redis://app:{SECRET}@127.0.0.1:6379/11?prefix=x")
    try:
        for text in (repr(broker), str(broker), broker.display_url):
            assert SECRET not in text
        assert "app:***@127.0.0.1:6379" in broker.display_url
    finally:
        broker.close()


def test_a_wrong_password_fails_without_showing_it(caplog):
    caplog.set_level(logging.DEBUG)
    broker = RedisBroker(f"redis://nobody:{SECRET}@127.0.0.1:6379/11?prefix=x")
    try:
        with pytest.raises(ConfigurationError) as info:
            broker.enqueue([Message(id=new_id(), task="t", queue="q", priority=0, payload=b"[]")])
    finally:
        broker.close()

    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    assert SECRET not in repr(info.value.__cause__)
    assert SECRET not in caplog.text


def test_retries_are_a_url_option():
    assert parse("redis://h:1/0?retries=5").retries == 5
    assert parse("redis://h:1/0").retries is None
    with pytest.raises(ConfigurationError):
        parse("redis://h:1/0?retries=-1")


def test_rediss_urls_connect_with_tls():
    broker = open_broker(f"rediss://app:{SECRET}@127.0.0.1:6390/0?prefix=x")
    try:
        assert isinstance(broker, RedisBroker)
        assert broker._client.connection_pool.connection_class is SSLConnection
        assert SECRET not in repr(broker)
    finally:
        broker.close()
