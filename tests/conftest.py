"""Shared fixtures: a private redis-server per test session (never the one on 6379), and anyio on asyncio."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, settings

from flume_rx.surfaces.embedded import RedisServer

# Speed is never what a test here checks (the machine is shared, its load unknown): no per-example deadline,
# and no health check failing a test because drawing its inputs was slow (test_codec's round trip did, at a
# load average of 18 on 2 cores).
settings.register_profile("flume", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("flume")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole session, on a free port, data in a temp dir."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server's URL, emptied before each test (restarted first if a test stopped it)."""
    if not redis_server.running:
        redis_server.restart()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
        client.script_flush()
    finally:
        client.close()
    yield redis_server.url


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A server of the test's own, with an fsynced append-only file, for tests that kill or restart it."""
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The garbage collector off for the test: whatever is freed meanwhile, reference counting alone freed
    (what a cycle holds stays)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
