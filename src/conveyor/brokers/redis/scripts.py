"""The Lua scripts, one per operation, and running them in batches by EVALSHA."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.errors import NotReplicated

NAMES = (
    "enqueue",
    "ready",
    "reserve",
    "ack",
    "extend",
    "progress",
    "release",
    "reclaim",
    "cancel",
    "request_cancel",
    "cancelling",
    "replay",
    "adopt",
    "purge",
    "expire",
    "get",
    "held",
    "jobs",
    "stats",
    "next_due",
    "beat",
    "limit",
    "limits",
    "pause",
    "resume",
    "paused",
)

#: One script call: (script name, KEYS, ARGV). KEYS[1] decides the slot: all its keys share it.
Call = tuple[str, Sequence[str], Sequence[Any]]
#: ``WAIT`` after the calls of a round trip: (replicas, timeout in milliseconds).
Wait = tuple[int, int]
#: Replies that mean "not run, the slot is elsewhere": read the cluster's layout again.
_MOVED = (MovedError, ClusterDownError)
#: Replies that mean "not run, the slot is moving": wait, then send again. An ASK is never
#: followed (with ASKING) for a script: the target may lack keys of the slot not moved yet,
#: and the script would write beside them; the source answers MOVED once the move ends.
_MOVING = (AskError, TryAgainError)


#: Helper files a script needs besides lib.lua, prepended after it. Every call of a script runs
#: its helpers' definitions anew (a closure per function), so each script takes only its own.
INCLUDES: dict[str, tuple[str, ...]] = {
    "enqueue": ("messages",),
    "ack": ("messages",),
    "reserve": ("corrupt",),
    "reclaim": ("corrupt",),
    "get": ("corrupt",),
    "jobs": ("corrupt",),
    "purge": ("corrupt",),
    "expire": ("corrupt",),
}


def _read(name: str) -> str:
    return resources.files("conveyor.brokers.redis").joinpath(f"{name}.lua").read_text()


class Scripts:
    """The operation scripts, each prefixed with the shared helpers of ``lib.lua`` and those of
    INCLUDES."""

    def __init__(self, cluster: bool = False, retries: int = 12) -> None:
        """``cluster``: every script first refuses to run in a slot that is migrating away
        (``slot_guard.lua``). ``retries``: how many times calls refused for a moving slot, or
        sent to a node that failed, are sent again, with exponential backoff (50 ms doubling to
        2 s: about 15 s for 12)."""
        lib = _read("lib") + ("\n" + _read("slot_guard") if cluster else "")
        self.source = {
            name: "\n".join([lib, *(_read(extra) for extra in INCLUDES.get(name, ())), _read(name)])
            for name in NAMES
        }
        self.sha = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in self.source.items()}
        self.retries = retries
        self._backoff = ExponentialBackoff(cap=2.0, base=0.05)

    def run(self, client: Any, calls: Sequence[Call], wait: Wait | None = None) -> list[Any]:
        """Run ``calls`` in one pipelined round trip (one per node on a cluster); return their
        replies in order, raising the first error reply. With ``wait``, each round trip ends
        with ``WAIT``, on the connection that sent the calls, and raises NotReplicated when
        fewer replicas than asked confirmed the calls' writes in time."""
        if not calls:
            return []
        replies = (
            self._on_cluster(client, calls, wait)
            if isinstance(client, RedisCluster)
            else self._on(client, calls, wait)
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _on(self, client: Any, calls: Sequence[Call], wait: Wait | None = None) -> list[Any]:
        """Replies from one server. Scripts it does not have (it restarted, or never saw them)
        are loaded and only those calls sent again: a NOSCRIPT call did not run."""
        replies = self._send(client, calls, wait)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for name in {calls[i][0] for i in missing}:
                client.script_load(self.source[name])
            again = self._send(client, [calls[i] for i in missing], wait)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def _on_cluster(self, cluster: Any, calls: Sequence[Call], wait: Wait | None) -> list[Any]:
        """One pipeline per primary owning the calls' slots. Calls refused because their slot
        moved, or sent to a node that failed, go again after the cluster's layout is read anew;
        calls refused because their slot is moving go again after a backoff. A node that failed
        may have run its calls before: they are sent again, as redis-py does on one server."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(self.retries + 1):
            by_node: dict[str, tuple[Any, list[int]]] = {}
            for i in todo:
                node = cluster.get_node_from_key(calls[i][1][0])
                by_node.setdefault(node.name, (node, []))[1].append(i)
            again: list[int] = []
            relayout = False
            failure: Exception | None = None
            for node, indexes in by_node.values():
                try:
                    sent = self._on(cluster.get_redis_connection(node), [calls[i] for i in indexes], wait)
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    failure, relayout = exc, True
                    again += indexes
                    continue
                for i, reply in zip(indexes, sent, strict=True):
                    replies[i] = reply
                    if isinstance(reply, (*_MOVED, *_MOVING)):
                        again.append(i)
                        relayout = relayout or isinstance(reply, _MOVED)
            if not again:
                return replies
            if attempt == self.retries:
                if failure is not None:
                    raise failure
                break
            if attempt or not relayout:  # a first MOVED is followed at once
                time.sleep(self._backoff.compute(attempt))
            if relayout:
                # Nodes still down: the next round trip fails and waits longer.
                with contextlib.suppress(RedisConnectionError, RedisTimeoutError, ClusterDownError):
                    cluster.nodes_manager.initialize()
            todo = again
        return replies

    def _send(self, client: Any, calls: Sequence[Call], wait: Wait | None = None) -> list[Any]:
        """Replies in order, error replies returned rather than raised. A single call skips the
        pipeline, whose bookkeeping costs a fifth of the client's CPU for a round trip; a WAIT
        needs it (it must go on the connection that wrote)."""
        if len(calls) == 1 and wait is None:
            ((name, keys, args),) = calls
            try:
                return [client.evalsha(self.sha[name], len(keys), *keys, *args)]
            except ResponseError as exc:
                return [exc]
        pipe = client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(self.sha[name], len(keys), *keys, *args)
        if wait is not None:
            pipe.execute_command("WAIT", *wait)
        replies = list(pipe.execute(raise_on_error=False))
        if wait is not None:
            confirmed = replies.pop()
            # Calls refused (MOVED from a former primary, where WAIT fails too) wrote nothing.
            if any(not isinstance(r, Exception) for r in replies):
                if isinstance(confirmed, Exception):
                    raise confirmed
                if int(confirmed) < wait[0]:
                    raise NotReplicated(
                        f"written on the primary, but {confirmed} of the {wait[0]} replicas asked "
                        f"for (wait_replicas) confirmed it within {wait[1]} ms: a failover may lose it"
                    )
        return replies
