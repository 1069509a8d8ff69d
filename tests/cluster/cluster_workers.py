"""Workers for the cluster test's worker processes (imported through the config's ``imports``).

They record into the plain Redis at FLUME_TEST_REDIS_URL, as tests/integration/sample_workers.py does.
"""

from __future__ import annotations

import os
import time

import redis

from flume_rx import worker

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["FLUME_TEST_REDIS_URL"])
    return _client


def _record(token: str, started: float) -> int:
    pipe = _redis().pipeline(transaction=False)
    pipe.hincrby("test:runs", token, 1)
    pipe.rpush("test:starts", repr(started))
    attempt, _ = pipe.execute()
    return int(attempt)


@worker("ClusterRecord")
def record(token: str) -> None:
    _record(token, time.time())
    time.sleep(0.005)


@worker("ClusterFailOnce")
def fail_once(token: str) -> None:
    """Fails its first run, so the job goes through the retry set and back."""
    if _record(token, time.time()) == 1:
        raise RuntimeError(f"first run of {token} fails on purpose")
