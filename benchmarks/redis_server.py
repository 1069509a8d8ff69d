"""A private redis-server for one benchmark run: its own free port and temp dir, never 6379.

Uses ``flume_rx.embedded.RedisServer`` when the package has it, so the suite and the project agree on how
a private Redis is started; otherwise a small launcher of the system binary.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from types import TracebackType

import redis

from flume_rx.embedded import find_redis_server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    if port == 6379:
        return _free_port()
    return port


def redis_binary() -> str:
    """The redis-server executable: the system one, else the one the ``embedded`` extra ships."""
    try:
        return find_redis_server()
    except FileNotFoundError as exc:
        raise RuntimeError(str(exc)) from None


class LocalRedis:
    """A redis-server subprocess on a free port, persistence off (benchmarks measure queues, not disks)."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="flume-bench-redis-")
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalRedis:
        self._proc = subprocess.Popen(
            [
                redis_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", self._dir,
                "--save", "",
                "--appendonly", "no",
                "--maxclients", "10000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
        client.close()
        return self

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """Yield the URL of a fresh private Redis and stop it afterwards."""
    try:
        from flume_rx.embedded import RedisServer  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        with LocalRedis() as server:
            yield server.url
        return
    with RedisServer() as embedded:
        yield str(embedded.url)
