"""Workers of the workflow tests (imported via the config's `imports`); they count runs in ``test:runs``."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis

from flume_rx import worker

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["FLUME_TEST_REDIS_URL"])
    return _client


@worker("wf.count", result_ttl=600)
def count(token: str, so_far: int = 0, sleep_s: float = 0.0) -> int:
    """A chain step: one more than the step before it (0 for the first)."""
    _redis().hincrby("test:runs", token, 1)
    if sleep_s:
        time.sleep(sleep_s)
    return so_far + 1


@worker("wf.square")
def square(n: int) -> int:
    _redis().hincrby("test:runs", f"square:{n}", 1)
    return n * n


@worker("wf.fail")
def fail(token: str, *previous: Any) -> None:
    _redis().hincrby("test:runs", token, 1)
    raise LookupError(f"no such photo {token!r}")


@worker("wf.gather", result_ttl=600)
def gather(tag: str, outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A group's callback: returns what it was given, so a test can read it with ``Flume.result``."""
    _redis().hincrby("test:runs", f"gather:{tag}", 1)
    return outcomes


@worker("wf.slow")
def slow(token: str, sleep_s: float, so_far: int = 0) -> int:
    """A chain step or group member that takes ``sleep_s``, so a kill lands while jobs are in flight."""
    _redis().hincrby("test:runs", token, 1)
    time.sleep(sleep_s)
    return so_far + 1


@worker("wf.wait")
async def wait(token: str) -> None:
    """Waits long enough to be aborted (its task is cancelled)."""
    _redis().hincrby("test:runs", token, 1)
    await asyncio.sleep(60)


@worker("wf.big")
def big(token: str, size: int) -> str:
    """A group member whose result takes ``size`` bytes (to fill a callback's record)."""
    _redis().hincrby("test:runs", token, 1)
    return "x" * size
