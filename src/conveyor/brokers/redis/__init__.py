"""The Redis backend: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS).

Besides redis-py's own URL options, the URL takes:

- ``prefix=NAME``: the first part of every key (default ``conveyor``), so several applications
  or test runs can share a database. A queue's keys are ``<prefix>:{<queue>}:...``: the
  ``{queue}`` hash tag puts all of them in one slot.
- ``cluster=1``: connect with redis-py's ``RedisCluster`` (give any node as host:port; database
  0 only). Each operation script touches one queue's slot; calls spanning queues send one
  script per queue, pipelined per node. While a queue's slot migrates its scripts refuse to
  run (TRYAGAIN, writing nothing) and are sent again, with backoff, until the move ends.
- ``wait_replicas=N`` (default 0) and ``wait_timeout=MS`` (default 1000): an enqueue returns
  only once ``N`` replicas confirmed it (``WAIT``), else raises ``NotReplicated`` (the jobs are
  stored on the primary; a failover before they replicate loses them). Replication is
  asynchronous: without it, a primary that dies may take acknowledged enqueues with it.

Effects committed with a task's acknowledgement are Redis commands,
``current_job().execute("RPUSH", (key, value))``, run inside the ack script: their keys must
be in the task's queue slot (``<prefix>:{<queue>}:anything``). Redis does not roll back, so
when an effect fails the job stays running and the effects before it in the same task remain.

Persistence decides what an acknowledged operation survives: with ``appendonly yes`` and
``appendfsync always`` every acknowledged enqueue and ack survives a crash of Redis or its
host; ``appendfsync everysec`` (Redis's default AOF setting) may lose the last second of them
on a host crash, and RDB snapshots alone lose everything since the last snapshot.
"""

from conveyor.brokers.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
