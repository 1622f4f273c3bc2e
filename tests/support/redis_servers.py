"""Private redis-server processes for tests that restart a server or need a cluster."""

from __future__ import annotations

import atexit
import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redis.client import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from conveyor.brokers.redis import acl

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster bus ports (10000 higher) are free and distinct too."""
    ports: list[int] = []
    taken: set[int] = set()
    for port in random.sample(range(20000, 55000), 5000):
        if {port, port + 10000} & taken or not (_bindable(port) and _bindable(port + 10000)):
            continue
        ports.append(port)
        taken |= {port, port + 10000}
        if len(ports) == n:
            return ports
    raise RuntimeError("no free ports for the cluster's nodes")


class Server:
    """One redis-server on a loopback port, its files in ``directory``."""

    def __init__(self, directory: Path, port: int, *options: str, tls_ca: Path | None = None) -> None:
        self.directory, self.port, self.options, self.tls_ca = directory, port, options, tls_ca
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def client(self) -> Redis:
        """An admin client (the default user), over TLS when the server only speaks TLS."""
        if self.tls_ca is not None:
            return Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self.tls_ca))
        return Redis(port=self.port, password=self.password)

    @property
    def password(self) -> str | None:
        """The ``--requirepass`` given to the server, if any."""
        options = list(self.options)
        return options[options.index("--requirepass") + 1] if "--requirepass" in options else None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                *(["--port", "0", "--tls-port"] if self.tls_ca is not None else ["--port"]),
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--logfile",
                "redis.log",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except RedisConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        """SIGKILL: what a crash of Redis or its host leaves behind."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@contextlib.contextmanager
def server(directory: Path, *options: str) -> Iterator[Server]:
    s = Server(directory, free_port(), *options)
    s.start()
    try:
        yield s
    finally:
        s.kill()


def _cluster_nodes(directory: Path, count: int, node_timeout: int) -> list[Server]:
    return [
        Server(
            directory / f"node{n}",
            port,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout),
            "--repl-diskless-sync-delay",
            "0",
        )
        for n, port in enumerate(free_cluster_ports(count))
    ]


def topology(port: int) -> list[dict[str, Any]]:
    """``CLUSTER NODES`` as seen by the node on ``port``: per node its ``id``, ``port``, ``flags``
    (a set), ``master`` (the id it replicates, or None) and ``slots`` ((low, high) ranges)."""
    client = Redis(port=port)
    try:
        raw = client.execute_command("CLUSTER", "NODES")
    finally:
        client.close()
    nodes: list[dict[str, Any]] = []
    for line in (raw.decode() if isinstance(raw, bytes) else str(raw)).splitlines():
        fields = line.split()
        ranges = [s.partition("-") for s in fields[8:] if not s.startswith("[")]
        nodes.append(
            {
                "id": fields[0],
                "port": int(fields[1].split("@")[0].rsplit(":", 1)[1]),
                "flags": set(fields[2].split(",")),
                "master": None if fields[3] == "-" else fields[3],
                "slots": [(int(low), int(high or low)) for low, _, high in ranges],
            }
        )
    return nodes


def slot_owner(port: int, slot: int) -> dict[str, Any]:
    """The node serving ``slot``, as the node on ``port`` sees it (see :func:`topology`)."""
    for node in topology(port):
        if "master" in node["flags"] and any(low <= slot <= high for low, high in node["slots"]):
            return node
    raise LookupError(f"no node serves slot {slot}")


def wait_cluster_ok(ports: list[int], timeout: float = 30.0) -> None:
    """Until every node on ``ports`` reports ``cluster_state:ok`` and every replica among them
    has its link to its primary up."""
    deadline = time.monotonic() + timeout
    for port in ports:
        client = Redis(port=port)
        try:
            while True:
                info = client.execute_command("CLUSTER INFO")
                role = client.info("replication")
                if info.get("cluster_state") == "ok" and (
                    role.get("role") == "master" or role.get("master_link_status") == "up"
                ):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the cluster node on {port} is not ready: {info}, {role}")
                time.sleep(0.1)
        finally:
            client.close()


@contextlib.contextmanager
def cluster(
    directory: Path, masters: int = 3, replicas: int = 0, node_timeout: int = 2000
) -> Iterator[list[Server]]:
    """A Redis Cluster of ``masters`` primaries and ``replicas`` replicas of each, all slots
    assigned; the primaries come first in the list (which replica follows which primary is
    redis-cli's choice: see :func:`topology`)."""
    nodes = _cluster_nodes(directory, masters * (1 + replicas), node_timeout)
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_cluster_ok([n.port for n in nodes])
        yield nodes
    finally:
        for node in nodes:
            node.kill()


_session_cluster: list[Server] | None = None


def session_cluster() -> list[Server]:
    """A private cluster of 3 primaries with a replica each, started on first use and killed
    when the test process exits: the contract suite's ``redis-cluster`` backend."""
    global _session_cluster
    if _session_cluster is None:
        directory = Path(tempfile.mkdtemp(prefix="conveyor-cluster-"))
        context = cluster(directory, masters=3, replicas=1)
        nodes = context.__enter__()
        atexit.register(context.__exit__, None, None, None)
        _session_cluster = nodes
    return _session_cluster


@contextlib.contextmanager
def tls_server(directory: Path) -> Iterator[Server]:
    """A redis-server speaking only TLS, with a certificate for 127.0.0.1 from a fresh test CA
    (``server.tls_ca``)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory, timeout=60)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=conveyor-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    )
    options = ["--tls-cert-file", "server.pem", "--tls-key-file", "server.key"]
    options += ["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"]
    s = Server(directory, free_port(), *options, tls_ca=directory / "ca.pem")
    s.start()
    try:
        yield s
    finally:
        s.kill()


#: The restricted user of :func:`acl_server`, and the prefix its stores' prefixes start with
#: (``ct:<random>``): the user may touch only ``ct:*`` keys and channels.
ACL_USER, ACL_PASSWORD, ACL_PREFIX = "conveyor", "acl-test-password", "ct"
#: What the test server grants its user: Conveyor's least ACL for the prefix.
ACL_RULE = acl.rule(ACL_PREFIX, ACL_PASSWORD)
_acl: Server | None = None


def acl_server() -> Server:
    """A private redis-server (one per test process, killed at exit) with the user ``conveyor``
    granted ``ACL_RULE``."""
    global _acl
    if _acl is None:
        server = Server(Path(tempfile.mkdtemp(prefix="conveyor-acl-")), free_port())
        server.start()
        atexit.register(server.kill)
        admin = server.client()
        try:
            admin.execute_command("ACL", "SETUSER", ACL_USER, *ACL_RULE)
        finally:
            admin.close()
        _acl = server
    return _acl


def acl_refusals(server: Server) -> list[str]:
    """What the server refused its users since the last call (ACL LOG, then reset), one line per
    refusal naming the command, key or channel: empty when the ACL granted all that was asked."""
    admin = server.client()
    try:
        entries = admin.acl_log()
        admin.acl_log_reset()
    finally:
        admin.close()
    return [
        f"{e.get('username')} refused {e.get('reason')} {e.get('object')!r}"
        f" (in {e.get('context')}, {e.get('count')} times)"
        for e in entries
    ]
