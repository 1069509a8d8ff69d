"""A private redis-server for one benchmark run: its own free port and temp dir, never 6379.

Uses ``flume_rx.surfaces.embedded.RedisServer`` when the package has it, so the suite and the project agree on how
a private Redis is started; otherwise a small launcher of the system binary.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from types import TracebackType

import redis

from flume_rx.surfaces.embedded import find_redis_server


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
        from flume_rx.surfaces.embedded import RedisServer  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        with LocalRedis() as server:
            yield server.url
        return
    with RedisServer() as embedded:
        yield str(embedded.url)


# Set in a database the suite has taken: keys found next to it later (a run that crashed) are the suite's own.
OWNER_KEY = "flume-bench:owned"


def redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    return re.sub(r"//[^@/]*@", "//***@", url)


@contextlib.contextmanager
def given_database(url: str) -> Iterator[str]:
    """Take the database of ``url``, a Redis the user runs, for one run; yield ``url``.

    The suite empties its database (``FLUSHDB``: that database only, never the server) before every
    measurement and once more at the end, so the database must be empty, or hold only what an earlier run of
    the suite left.

    Raises:
        RuntimeError: the database holds keys that are not the suite's.
    """
    client = redis.Redis.from_url(url)
    try:
        size = int(client.dbsize())  # type: ignore[arg-type]
        if size and not client.exists(OWNER_KEY):
            raise RuntimeError(
                f"the database at {redacted(url)} holds {size} keys, and the benchmarks empty their database "
                "before each measurement; point them at an empty database (e.g. /15 of your Redis)"
            )
        client.set(OWNER_KEY, "1")
        try:
            yield url
        finally:
            with contextlib.suppress(redis.RedisError):
                client.flushdb()
    finally:
        client.close()
