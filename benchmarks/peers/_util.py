"""Small helpers the adapters share."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable
from typing import TypeVar

import redis

_T = TypeVar("_T")

PY = sys.executable
BATCH = 1000  # jobs per pipeline / gather round when a library has no bulk call of its own


def broker_url() -> str:
    """The Redis under test, as the runner hands it to worker processes."""
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0")


class LoopRunner:
    """One private event loop for an async library's producer, driven from synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Awaitable[_T]) -> _T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()


_redis_clients: dict[str, redis.Redis] = {}


def client(url: str) -> redis.Redis:
    """A cached client of the Redis under test, for the runner's backlog samples."""
    client = _redis_clients.get(url)
    if client is None:
        client = _redis_clients[url] = redis.Redis.from_url(url)
    return client


def llen(url: str, key: str) -> int:
    """LLEN of a key of the Redis under test."""
    value: int = client(url).llen(key)  # type: ignore[assignment]
    return value
