"""A bulk enqueue into a Redis that fills up during the call writes all of its jobs or none of them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from flume_rx import Flume
from flume_rx.model import codec
from flume_rx.model.errors import StoreError
from flume_rx.store.keys import Keys
from flume_rx.surfaces.embedded import RedisServer

QUEUE = "bulk"
JOBS = 2500
FILLER = b"x" * 1000


@pytest.fixture
def full_redis() -> Iterator[tuple[RedisServer, redis.Redis]]:
    """A private Redis of 4 MB with noeviction, filled with 1 kB strings until it refuses a write."""
    with RedisServer(extra_args=["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]) as server:
        client = redis.Redis.from_url(server.url)
        filled = 0
        while True:
            try:
                client.set(f"filler:{filled}", FILLER)
            except redis.exceptions.ResponseError as exc:
                assert "maxmemory" in str(exc)
                break
            filled += 1
        yield server, client
        client.close()


def _queued_ids(client: redis.Redis) -> set[str]:
    return {codec.decode(p).id for p in client.lrange(Keys("t").of(QUEUE).queue, 0, -1)}


@pytest.mark.parametrize("unique", [False, True], ids=["plain", "unique_keys"])
def test_a_bulk_into_a_redis_that_fills_mid_call_writes_all_or_nothing(
    full_redis: tuple[RedisServer, redis.Redis], unique: bool
) -> None:
    """Free the full Redis 100 kB at a time and bulk enqueue 2,500 jobs (about 0.8 MB) after each step.

    Every refused call must have written nothing (before the fix, the chunks that fitted were written and ran
    although the call raised), and the first call that fits writes exactly its 2,500 jobs.
    """
    server, client = full_redis
    filler = sorted(client.keys("filler:*"))
    jobs = [("BulkWorker", ["y" * 200, n]) for n in range(JOBS)]
    keys = [f"key-{n}" for n in range(JOBS)] if unique else None
    refused = 0
    with Flume(server.url, "t") as flume:
        while True:
            try:
                ids = flume.bulk_enqueue(QUEUE, jobs, unique_keys=keys)
            except StoreError as exc:
                refused += 1
                assert "full" in str(exc) and "maxmemory" in str(exc), exc
                assert client.llen(Keys("t").of(QUEUE).queue) == 0, (
                    f"a refused bulk wrote jobs (attempt {refused})"
                )
                assert not client.keys(Keys("t").of(QUEUE).unique("*")), "a refused bulk claimed unique keys"
                assert filler, "the Redis had room for nothing at all"
                client.delete(*filler[:100])
                del filler[:100]
                continue
            break
    assert refused >= 2, "the Redis never filled during a call: the test did not test anything"
    assert len(ids) == JOBS
    assert _queued_ids(client) == set(ids)
