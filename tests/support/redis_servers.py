"""Private redis-server processes for tests that restart a server or need a cluster."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from redis.client import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

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

    def __init__(self, directory: Path, port: int, *options: str) -> None:
        self.directory, self.port, self.options = directory, port, options
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
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
        client = Redis(port=self.port)
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


@contextlib.contextmanager
def cluster(directory: Path, masters: int = 3) -> Iterator[list[Server]]:
    """A Redis Cluster of ``masters`` primaries and no replicas, all slots assigned."""
    nodes = [
        Server(
            directory / f"node{n}",
            port,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        )
        for n, port in enumerate(free_cluster_ports(masters))
    ]
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
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        for node in nodes:
            client = Redis(port=node.port)
            try:
                while client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise TimeoutError("the cluster did not come up")
                    time.sleep(0.1)
            finally:
                client.close()
        yield nodes
    finally:
        for node in nodes:
            node.kill()
