"""A local Redis Cluster of 3 masters, each a private redis-server on a free port with its own dir."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import redis

from flume_rx.surfaces.embedded import RedisServer


class LocalCluster:
    """Three masters sharing the 16384 slots; :attr:`url` is a ``redis+cluster://`` URL flume_rx understands."""

    def __init__(self, servers: list[RedisServer]) -> None:
        self.servers = servers

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}/0"

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.servers[0].port)

    def flush(self) -> None:
        for server in self.servers:
            node = redis.Redis.from_url(server.url)
            node.flushall()
            node.script_flush()
            node.close()


def _cluster_ok(ports: list[int]) -> bool:
    for port in ports:
        node = redis.Redis(host="127.0.0.1", port=port)
        try:
            if node.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") < 0:
                return False
        finally:
            node.close()
    return True


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.fail("redis-cli is needed to build the local cluster; install redis-tools")
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                RedisServer(extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            )
            for _ in range(3)
        ]
        ports = [s.port for s in servers]
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while not _cluster_ok(ports):
            if time.monotonic() > deadline:
                pytest.fail("the local cluster did not reach cluster_state:ok within 30 s")
            time.sleep(0.1)
        yield LocalCluster(servers)


@pytest.fixture
def cluster(redis_cluster: LocalCluster) -> LocalCluster:
    redis_cluster.flush()
    return redis_cluster
