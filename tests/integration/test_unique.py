"""Unique jobs on a real Redis: one job per key while queued, scheduled or running; freed at ack or dead."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from flume_rx import Flume, worker
from flume_rx import config as config_module
from flume_rx.errors import ConfigError
from flume_rx.registry import unregister
from flume_rx.runtime import WorkerRuntime
from flume_rx.store import RedisStore, Settlement

QUEUE = "uniq"
KEY = f"{{t:{QUEUE}}}:unique:welcome:42"


@pytest.fixture
def flume(redis_url: str) -> Iterator[Flume]:
    with Flume(redis_url, "t") as client:
        yield client


@pytest.fixture
def runs() -> Iterator[list[Any]]:
    seen: list[Any] = []

    @worker("UWelcome")
    def welcome(user_id: int) -> None:
        seen.append(user_id)

    @worker("UFails")
    def fails() -> None:
        raise RuntimeError("always")

    yield seen
    unregister("UWelcome")
    unregister("UFails")


def _drain(redis_url: str, max_retries: int = 0) -> None:
    config = config_module.parse(
        {
            "redis_url": redis_url,
            "namespace": "t",
            "pipelines": {
                "main": {
                    "queue": QUEUE,
                    "retry": {"max_retries": max_retries, "backoff_initial": 1, "backoff_max": 1},
                }
            },
        }
    )

    async def main() -> None:
        await asyncio.wait_for(WorkerRuntime(config, burst=True).run(), 30)

    asyncio.run(main())


def test_an_equal_job_returns_the_waiting_job_id(flume: Flume, redis_url: str) -> None:
    first = flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42", unique_for=60)
    again = flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42", unique_for=60)
    other = flume.enqueue(QUEUE, "UWelcome", [43], unique_key="welcome:43", unique_for=60)
    assert again == first and other != first
    assert flume.stats([QUEUE])[QUEUE]["queued"] == 2
    client = redis.Redis.from_url(redis_url)
    assert client.get(KEY) == first.encode()
    ttl_ms: Any = client.pttl(KEY)
    assert 0 < ttl_ms <= 60_000


def test_the_key_is_released_when_the_job_is_acked(flume: Flume, redis_url: str, runs: list[Any]) -> None:
    first = flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42")
    _drain(redis_url)
    assert runs == [42]
    assert not redis.Redis.from_url(redis_url).exists(KEY)
    assert flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42") != first


def test_a_retried_job_keeps_the_key_and_a_dead_one_releases_it(
    flume: Flume, redis_url: str, runs: list[Any]
) -> None:
    client = redis.Redis.from_url(redis_url)
    first = flume.enqueue(QUEUE, "UFails", unique_key="welcome:42")
    _drain(redis_url, max_retries=1)  # the first attempt fails into the retry set
    assert flume.stats([QUEUE])[QUEUE]["retry"] == 1
    assert client.get(KEY) == first.encode()
    assert flume.enqueue(QUEUE, "UFails", unique_key="welcome:42") == first
    time.sleep(0.05)  # the 1 ms backoff passes, so the next drain promotes and runs the last attempt
    deadline = time.monotonic() + 10
    while flume.stats([QUEUE])[QUEUE]["dead"] == 0 and time.monotonic() < deadline:
        _drain(redis_url, max_retries=1)
    assert flume.stats([QUEUE])[QUEUE]["dead"] == 1
    assert not client.exists(KEY)


def test_a_scheduled_job_holds_the_key_from_its_due_time(flume: Flume, redis_url: str) -> None:
    due = time.time() + 120
    first = flume.enqueue_at(QUEUE, due, "UWelcome", [42], unique_key="welcome:42", unique_for=10)
    assert flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42") == first
    stats = flume.stats([QUEUE])[QUEUE]
    assert (stats["scheduled"], stats["queued"]) == (1, 0)
    ttl_ms: Any = redis.Redis.from_url(redis_url).pttl(KEY)
    assert 100_000 < ttl_ms <= 131_000


def test_racing_producers_add_exactly_one_job(redis_url: str) -> None:
    barrier = threading.Barrier(8)

    def produce(_: int) -> str:
        with Flume(redis_url, "t") as client:
            barrier.wait()
            return client.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42")

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(produce, range(8)))
    assert len(ids) == 1
    with Flume(redis_url, "t") as client:
        assert client.stats([QUEUE])[QUEUE]["queued"] == 1


def test_settling_an_expired_holder_leaves_a_newer_claim_alone(flume: Flume, redis_url: str) -> None:
    first = flume.enqueue(QUEUE, "UWelcome", [42], unique_key="welcome:42")
    client = redis.Redis.from_url(redis_url)

    async def main() -> None:
        async with RedisStore.from_url(redis_url, "t") as store:
            (payload,) = await store.fetch(QUEUE, "c1", 1, 0)
            client.set(KEY, "newer-job")  # the first claim expired and a newer job took the key
            await store.settle(QUEUE, "c1", [Settlement(payload, "ack", unique=("welcome:42", first))])

    asyncio.run(main())
    assert client.get(KEY) == b"newer-job"


def test_bad_unique_arguments_are_named(flume: Flume) -> None:
    with pytest.raises(ConfigError, match="unique_key"):
        flume.enqueue(QUEUE, "UWelcome", [1], unique_key="")
    with pytest.raises(ConfigError, match="unique_for"):
        flume.enqueue(QUEUE, "UWelcome", [1], unique_key="k", unique_for=0)
