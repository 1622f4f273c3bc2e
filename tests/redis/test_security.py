"""Least privilege and TLS: the broker works as a user granted only the least ACL (the whole
contract suite runs that way as the ``redis-acl`` backend, failing on any refusal), the ACL
refuses what a leaked worker credential must not do, and ``rediss://`` reaches a TLS-only server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner
from redis.client import Redis
from redis.exceptions import NoPermissionError
from redis_servers import (
    ACL_PASSWORD,
    ACL_PREFIX,
    ACL_RULE,
    ACL_USER,
    Server,
    acl_refusals,
    acl_server,
    cluster,
    tls_server,
)

from conveyor import Conveyor
from conveyor.brokers.redis import RedisBroker, acl
from conveyor.brokers.redis.url import parse
from conveyor.cli import main
from conveyor.ids import new_id
from conveyor.priority import Fairness
from conveyor.records import Message, Outcome

# Keys and channels inside the user's prefix, as the broker names them.
JOBS, COUNTS, WAKE = (
    f"{ACL_PREFIX}:app:{{q}}:jobs",
    f"{ACL_PREFIX}:app:{{q}}:counts",
    f"{ACL_PREFIX}:app:{{q}}:wake",
)
QUEUES, SHA = f"{ACL_PREFIX}:app:queues", "0" * 40

#: What a leaked worker credential must not run, its keys and channels inside the prefix unless
#: the point is that they are outside it.
MUST_DENY: list[tuple[str, ...]] = [
    # Other databases: an ACL cannot limit them, so no way to reach one is granted.
    ("SELECT", "1"),
    ("SELECT", "0"),
    ("MOVE", JOBS, "1"),
    ("COPY", JOBS, f"{ACL_PREFIX}:app:{{q}}:copy", "DB", "1"),
    ("SWAPDB", "0", "1"),
    # Other apps' names: keys and channels.
    ("SCAN", "0"),
    ("RANDOMKEY",),
    ("KEYS", "*"),
    ("DBSIZE",),
    ("INFO", "keyspace"),
    ("PUBSUB", "CHANNELS"),
    ("PUBSUB", "NUMSUB", WAKE),
    ("PUBSUB", "NUMPAT"),
    ("PSUBSCRIBE", "*"),
    # Server-wide scripts and functions.
    ("SCRIPT", "FLUSH"),
    ("SCRIPT", "KILL"),
    ("EVAL", "return 1", "0"),
    ("FUNCTION", "FLUSH"),
    ("FUNCTION", "DELETE", "lib"),
    ("FUNCTION", "LOAD", "#!lua name=lib\nredis.register_function('f', function() return 1 end)"),
    ("FUNCTION", "KILL"),
    ("FUNCTION", "RESTORE", "x"),
    ("FCALL", "f", "1", JOBS),
    # Administration.
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN",),
    ("CLIENT", "KILL", "ID", "1"),
    ("CLIENT", "LIST"),
    ("CLIENT", "PAUSE", "1000"),
    ("MONITOR",),
    ("SAVE",),
    ("BGSAVE",),
    ("REPLICAOF", "NO", "ONE"),
    ("MIGRATE", "127.0.0.1", "1", JOBS, "0", "1000"),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", ACL_USER, "+@all"),
    ("MODULE", "LIST"),
    ("SLOWLOG", "GET"),
    ("CLUSTER", "NODES"),
    ("CLUSTER", "FAILOVER"),
    # Granted commands on keys and channels outside the prefix, or a name the prefix begins.
    ("HSET", "other:key", "f", "v"),
    ("HGET", f"{ACL_PREFIX}x:key", "f"),
    ("ZADD", "other:key", "1", "m"),
    ("SMEMBERS", "other:queues"),
    ("EVALSHA", SHA, "1", "other:key"),
    ("RENAME", JOBS, "other:key"),
    ("SUBSCRIBE", "other:channel"),
    ("PUBLISH", "other:channel", ""),
    # Needed only with an option (acl.OPTIONAL).
    ("WAIT", "1", "0"),
]

#: One use of each granted command as the broker sends it, keys and channels in the prefix.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "evalsha": ("EVALSHA", SHA, "3", JOBS, f"{ACL_PREFIX}:app:{{q}}:keys", COUNTS, "now"),
    "script|load": ("SCRIPT", "LOAD", "return 1"),
    "ping": ("PING",),
    "time": ("TIME",),
    "subscribe": ("SUBSCRIBE", WAKE),
    "unsubscribe": ("UNSUBSCRIBE", WAKE),
    "publish": ("PUBLISH", WAKE, ""),
    "sadd": ("SADD", QUEUES, "q"),
    "smembers": ("SMEMBERS", QUEUES),
    "hset": ("HSET", f"{ACL_PREFIX}:app:workers", "w", "entry"),
    "hget": ("HGET", JOBS, "id"),
    "hmget": ("HMGET", JOBS, "a", "b"),
    "hgetall": ("HGETALL", COUNTS),
    "hkeys": ("HKEYS", COUNTS),
    "hscan": ("HSCAN", COUNTS, "0"),
    "hexists": ("HEXISTS", JOBS, "id"),
    "hsetnx": ("HSETNX", f"{ACL_PREFIX}:app:{{q}}:paused", "", "1"),
    "hdel": ("HDEL", JOBS, "id"),
    "hincrby": ("HINCRBY", COUNTS, "p0", "1"),
    "zadd": ("ZADD", f"{ACL_PREFIX}:app:{{q}}:running", "1", "id"),
    "zrem": ("ZREM", f"{ACL_PREFIX}:app:{{q}}:running", "id"),
    "zremrangebyrank": ("ZREMRANGEBYRANK", f"{ACL_PREFIX}:app:{{q}}:p0", "0", "1"),
    "zcount": ("ZCOUNT", f"{ACL_PREFIX}:app:{{q}}:p0", "-inf", "1"),
    "zrange": ("ZRANGE", f"{ACL_PREFIX}:app:{{q}}:dead", "0", "-1"),
    "zrangebyscore": ("ZRANGEBYSCORE", f"{ACL_PREFIX}:app:{{q}}:done", "-inf", "1"),
    "zrevrange": ("ZREVRANGE", f"{ACL_PREFIX}:app:{{q}}:done", "0", "9"),
    "zscore": ("ZSCORE", f"{ACL_PREFIX}:app:{{q}}:dead", "j1"),
    "object|encoding": ("OBJECT", "ENCODING", f"{ACL_PREFIX}:app:{{q}}:running"),
    "wait": ("WAIT", "1", "1000"),
    "exists": ("EXISTS", f"{JOBS}:~slot-probe"),
    "cluster|slots": ("CLUSTER", "SLOTS"),
    "command": ("COMMAND",),
    "client|setinfo": ("CLIENT", "SETINFO", "LIB-NAME", "redis-py"),
}


def dry_run(server: Server, user: str, command: Sequence[str]) -> str:
    """Redis's verdict on ``user`` running ``command``: "OK", or why it would be refused."""
    admin = server.client()
    try:
        reply = admin.execute_command("ACL", "DRYRUN", user, *command)
    finally:
        admin.close()
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def version(server: Server) -> tuple[int, ...]:
    admin = server.client()
    try:
        return tuple(int(n) for n in admin.info("server")["redis_version"].split("."))
    finally:
        admin.close()


def test_the_test_server_grants_the_published_rule() -> None:
    assert acl.rule(ACL_PREFIX, ACL_PASSWORD) == ACL_RULE


def test_docs_publish_the_rule() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    assert acl.setuser() in docs
    for option in acl.OPTIONAL:
        for command in acl.OPTIONAL[option]:
            assert f"+{command}" in docs


@pytest.mark.parametrize("command", MUST_DENY, ids=[" ".join(c[:2]) for c in MUST_DENY])
def test_the_acl_refuses(command: tuple[str, ...]) -> None:
    verdict = dry_run(acl_server(), ACL_USER, command)
    assert verdict != "OK", f"the ACL lets {ACL_USER!r} run {' '.join(command)!r}"


def test_the_acl_grants_each_command_the_broker_sends() -> None:
    assert set(acl.COMMANDS) | {c for o in acl.OPTIONAL.values() for c in o} == set(EXAMPLES)
    refused = {c: v for c in acl.COMMANDS if (v := dry_run(acl_server(), ACL_USER, EXAMPLES[c])) != "OK"}
    assert not refused
    for command in ("AUTH", ACL_USER, ACL_PASSWORD), ("HELLO", "3", "AUTH", ACL_USER, ACL_PASSWORD):
        assert dry_run(acl_server(), ACL_USER, command) == "OK"  # Redis lets every user


@pytest.fixture
def scratch_user() -> Iterator[str]:
    """A second user on the ACL server, for other renderings of the rule."""
    yield "conveyor-scratch"
    admin = acl_server().client()
    try:
        admin.acl_deluser("conveyor-scratch")
    finally:
        admin.close()


@pytest.mark.parametrize("option", ["wait_replicas", "cluster"])
def test_an_option_grants_its_commands_and_no_more(option: str, scratch_user: str) -> None:
    admin = acl_server().client()
    try:
        admin.execute_command("ACL", "SETUSER", scratch_user, *acl.rule(ACL_PREFIX, options=[option]))
    finally:
        admin.close()
    for command in acl.OPTIONAL[option]:
        assert dry_run(acl_server(), scratch_user, EXAMPLES[command]) == "OK"
    others = [c for o, cs in acl.OPTIONAL.items() if o not in (option, "setinfo") for c in cs]
    for command in others:
        assert dry_run(acl_server(), scratch_user, EXAMPLES[command]) != "OK"


def test_setinfo_is_granted_where_the_server_has_it(scratch_user: str) -> None:
    """Redis 7.0 has no CLIENT SETINFO (redis-py skips it): the option is for 7.2 and later."""
    server = acl_server()
    admin = server.client()
    try:
        if version(server) < (7, 2):
            with pytest.raises(Exception, match="client\\|setinfo"):
                admin.execute_command("ACL", "SETUSER", scratch_user, *acl.rule(options=["setinfo"]))
        else:
            admin.execute_command("ACL", "SETUSER", scratch_user, *acl.rule(options=["setinfo"]))
            assert dry_run(server, scratch_user, EXAMPLES["client|setinfo"]) == "OK"
    finally:
        admin.close()


def test_effects_need_their_commands_and_keys_granted(scratch_user: str) -> None:
    """A task's effects are the app's own commands on the app's own keys: refused (the job keeps
    its lease) until the rule grants them, as docs/security.md shows."""
    server, prefix, counter = acl_server(), f"{ACL_PREFIX}:effects-{new_id()}", f"app:{{q}}:{new_id()}"
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", scratch_user, *acl.rule(ACL_PREFIX, "scratch-password"))
    broker = RedisBroker(f"redis://{scratch_user}:scratch-password@127.0.0.1:{server.port}/0?prefix={prefix}")
    try:
        broker.enqueue([Message(id=new_id(), task="t", queue="q", priority=0, payload=b"[[],{}]")])
        [d] = broker.reserve(["q"], 1, 30.0, "w", Fairness((6, 3, 1)))
        effect = Outcome(d.id, d.token, "succeeded", effects=(("INCRBY", (counter, 5)),))
        acl_refusals(server)
        [refused] = broker.ack([effect])
        assert refused.status == "effects_failed" and "can't run this command" in (refused.error or "")
        admin.execute_command("ACL", "SETUSER", scratch_user, "+incrby")
        [refused] = broker.ack([effect])
        assert refused.status == "effects_failed" and "can't access" in (refused.error or "")
        assert {line.split(" (")[0] for line in acl_refusals(server)} == {
            f"{scratch_user} refused command 'incrby'",
            f"{scratch_user} refused key {counter!r}",
        }
        admin.execute_command("ACL", "SETUSER", scratch_user, "~app:*")
        [granted] = broker.ack([effect])
        assert granted.status == "ok" and admin.get(counter) == b"5"
    finally:
        broker.close()
        admin.delete(counter)
        admin.close()
        acl_refusals(server)


def test_the_cli_prints_the_rule_for_a_url_and_it_is_enough(scratch_user: str) -> None:
    server = acl_server()
    url = f"redis://{scratch_user}:cli-secret@127.0.0.1:{server.port}/0?prefix={ACL_PREFIX}:cli-{new_id()}"
    printed = CliRunner().invoke(main, ["redis-acl", url])
    assert printed.exit_code == 0, printed.output
    line = printed.output.strip()
    assert line == acl.setuser(scratch_user, parse(url).prefix) and "cli-secret" not in line
    admin = server.client()
    try:
        admin.execute_command(*line.replace(">PASSWORD", ">cli-secret").split())
    finally:
        admin.close()
    acl_refusals(server)
    broker = RedisBroker(url)
    try:
        [enqueued] = broker.enqueue(
            [Message(id=new_id(), task="t", queue="q", priority=0, payload=b"[[],{}]")]
        )
        [d] = broker.reserve(["q"], 1, 30.0, "w", Fairness((6, 3, 1)))
        assert [s.status for s in broker.ack([Outcome(d.id, d.token, "succeeded")])] == ["ok"]
        assert [j.id for j in broker.jobs(state="succeeded")] == [enqueued.id]
    finally:
        broker.close()
    assert acl_refusals(server) == []
    options = f"redis://127.0.0.1:{server.port}?prefix=app&cluster=1&wait_replicas=1"
    assert CliRunner().invoke(main, ["redis-acl", options, "--user", "u"]).output.strip() == acl.setuser(
        "u", "app", options=["cluster", "wait_replicas"]
    )
    other_db = CliRunner().invoke(main, ["redis-acl", f"redis://127.0.0.1:{server.port}/3"])
    assert other_db.exit_code != 0 and "database other than 0" in other_db.output


def test_a_hashed_password_authenticates(scratch_user: str) -> None:
    """``password="#<sha256>"`` stores only the hash, as an ACL file should."""
    hashed = "#" + hashlib.sha256(b"hashed-secret").hexdigest()
    admin = acl_server().client()
    try:
        admin.execute_command(*acl.setuser(scratch_user, ACL_PREFIX, password=hashed).split())
    finally:
        admin.close()
    user = Redis(port=acl_server().port, username=scratch_user, password="hashed-secret")
    try:
        assert user.ping()
    finally:
        user.close()


def test_the_dry_run_verdicts_hold_when_run() -> None:
    """ACL DRYRUN is what the server does: the user really is refused, and really may."""
    user = Redis(port=acl_server().port, username=ACL_USER, password=ACL_PASSWORD)
    try:
        for command in (("FLUSHALL",), ("SCAN", "0"), ("SELECT", "1"), ("SCRIPT", "FLUSH")):
            with pytest.raises(NoPermissionError):
                user.execute_command(*command)
        with pytest.raises(NoPermissionError):
            user.hset("other:key", "f", "1")
        user.hset(JOBS, "f", "1")
        user.hdel(JOBS, "f")
    finally:
        user.close()
        acl_refusals(acl_server())


def test_a_database_other_than_0_is_refused_at_connect() -> None:
    broker = RedisBroker(
        f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{acl_server().port}/1?prefix={ACL_PREFIX}:db1",
        retries=0,
    )
    try:
        with pytest.raises(NoPermissionError, match="select"):
            broker.stats()
    finally:
        broker.close()
        acl_refusals(acl_server())


def test_a_worker_runs_tasks_as_the_restricted_user(tmp_path: Path, run_worker) -> None:
    server = acl_server()
    acl_refusals(server)
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{server.port}/0?prefix={ACL_PREFIX}:e2e-{new_id()}"
    app = Conveyor(url)

    @app.task
    def double(n: int) -> int:
        return 2 * n

    try:
        with run_worker(app):
            assert [double.enqueue(n).result(timeout=30) for n in range(5)] == [0, 2, 4, 6, 8]
        app.broker.workers()  # the registry, as the CLI and dashboard read it
        app.broker.jobs()
    finally:
        app.close()
    assert acl_refusals(server) == []


def test_a_cluster_runs_as_the_restricted_user(tmp_path: Path) -> None:
    """On a Redis Cluster redis-py also reads the layout and the command table: the ``cluster``
    option's commands, granted on every node."""
    with cluster(tmp_path / "cluster") as nodes:
        for node in nodes:
            admin = node.client()
            try:
                admin.execute_command(
                    "ACL", "SETUSER", ACL_USER, *acl.rule(ACL_PREFIX, ACL_PASSWORD, options=["cluster"])
                )
                admin.acl_log_reset()
            finally:
                admin.close()
        broker = RedisBroker(
            f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{nodes[0].port}/0?cluster=1&prefix={ACL_PREFIX}:c"
        )
        try:
            queues = [f"q{n}" for n in range(6)]  # in several slots, on several nodes
            broker.enqueue(
                [Message(id=new_id(), task="t", queue=q, priority=0, payload=b"[[],{}]") for q in queues]
            )
            broker.wait(queues, 0.01)
            deliveries = broker.reserve(queues, 10, 30.0, "w", Fairness((6, 3, 1)))
            assert len(deliveries) == len(queues)
            outcomes = [Outcome(d.id, d.token, "succeeded", result=b"1") for d in deliveries]
            assert {s.status for s in broker.ack(outcomes)} == {"ok"}
            assert sum(s.total("succeeded") for s in broker.stats()) == 6
            broker.workers()
            broker.reclaim()
        finally:
            broker.close()
        assert [line for node in nodes for line in acl_refusals(node)] == []


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


def test_the_backends_page_publishes_the_rule_the_suite_runs_as() -> None:
    from conveyor.brokers.redis import acl

    page = (Path(__file__).parents[2] / "docs" / "backends.md").read_text()
    assert acl.setuser() in page
