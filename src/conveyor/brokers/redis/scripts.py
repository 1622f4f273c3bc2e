"""The Lua scripts, one per operation, and running them in batches by EVALSHA."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)

NAMES = (
    "enqueue",
    "ready",
    "reserve",
    "ack",
    "extend",
    "release",
    "reclaim",
    "cancel",
    "replay",
    "adopt",
    "purge",
    "expire",
    "get",
    "jobs",
    "stats",
    "next_due",
    "beat",
)

#: One script call: (script name, KEYS, ARGV). KEYS[1] decides the slot: all its keys share it.
Call = tuple[str, Sequence[str], Sequence[Any]]
#: Replies that mean "not run here, the cluster's layout changed": safe to send again.
_ELSEWHERE = (MovedError, AskError, ClusterDownError, TryAgainError)
_LAYOUT_RETRIES = 3


def _read(name: str) -> str:
    return resources.files("conveyor.brokers.redis").joinpath(f"{name}.lua").read_text()


class Scripts:
    """The operation scripts, each prefixed with the shared helpers of ``lib.lua``."""

    def __init__(self) -> None:
        lib = _read("lib")
        self.source = {name: lib + "\n" + _read(name) for name in NAMES}
        self.sha = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in self.source.items()}

    def run(self, client: Any, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls`` in one pipelined round trip (one per node on a cluster); return their
        replies in order, raising the first error reply."""
        if not calls:
            return []
        replies = (
            self._on_cluster(client, calls) if isinstance(client, RedisCluster) else self._on(client, calls)
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _on(self, client: Any, calls: Sequence[Call]) -> list[Any]:
        """Replies from one server. Scripts it does not have (it restarted, or never saw them)
        are loaded and only those calls sent again: a NOSCRIPT call did not run."""
        replies = self._send(client, calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for name in {calls[i][0] for i in missing}:
                client.script_load(self.source[name])
            for i, reply in zip(missing, self._send(client, [calls[i] for i in missing]), strict=True):
                replies[i] = reply
        return replies

    def _on_cluster(self, cluster: Any, calls: Sequence[Call]) -> list[Any]:
        """One pipeline per primary owning the calls' slots; calls that reached a node no longer
        owning their slot are sent again after the cluster's layout is read anew."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(_LAYOUT_RETRIES + 1):
            by_node: dict[str, tuple[Any, list[int]]] = {}
            for i in todo:
                node = cluster.get_node_from_key(calls[i][1][0])
                by_node.setdefault(node.name, (node, []))[1].append(i)
            moved: list[int] = []
            for node, indexes in by_node.values():
                client = cluster.get_redis_connection(node)
                for i, reply in zip(indexes, self._on(client, [calls[i] for i in indexes]), strict=True):
                    replies[i] = reply
                    if isinstance(reply, _ELSEWHERE):
                        moved.append(i)
            if not moved or attempt == _LAYOUT_RETRIES:
                break
            cluster.nodes_manager.initialize()
            todo = moved
        return replies

    def _send(self, client: Any, calls: Sequence[Call]) -> list[Any]:
        """Replies in order, error replies returned rather than raised. A single call skips the
        pipeline, whose bookkeeping costs a fifth of the client's CPU for a round trip."""
        if len(calls) == 1:
            ((name, keys, args),) = calls
            try:
                return [client.evalsha(self.sha[name], len(keys), *keys, *args)]
            except ResponseError as exc:
                return [exc]
        pipe = client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(self.sha[name], len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))
