"""Workers for the integration tests that run real worker processes (imported via the config's `imports`).

They record what they did in Redis (the URL comes from FLUME_TEST_REDIS_URL), so the test process can check
every job ran at least once even when the worker process was killed.
"""

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


@worker("RecordWorker")
def record(token: str, sleep_s: float = 0.0, padding: str = "") -> None:
    """Sleeps, then counts the run of ``token`` and logs its start time (``padding`` only makes a job large)."""
    started = time.time()
    if sleep_s:
        time.sleep(sleep_s)
    pipe = _redis().pipeline(transaction=False)
    pipe.hincrby("test:runs", token, 1)
    pipe.rpush("test:starts", repr(started))
    pipe.execute()


@worker("AsyncRecordWorker")
async def record_async(token: str) -> None:
    """Stamps its start on the event loop, right where the throttle let it go, then counts the run."""
    started = time.time()
    pipe = _redis().pipeline(transaction=False)
    pipe.hincrby("test:runs", token, 1)
    pipe.rpush("test:starts", repr(started))
    # Off the loop, so one job's round trip does not delay the next job's first line.
    await asyncio.to_thread(pipe.execute)


@worker("RecordBatchWorker", batch=True)
def record_batch(batch: list[list[Any]]) -> None:
    pipe = _redis().pipeline(transaction=False)
    pipe.rpush("test:batch_sizes", len(batch))
    for args in batch:
        pipe.hincrby("test:runs", args[0], 1)
        pipe.rpush("test:starts", repr(time.time()))
    pipe.execute()


@worker("FailingWorker")
def always_fail(token: str) -> None:
    """Counts the run of ``token``, then fails, so its job is retried and then goes to the dead letters."""
    _redis().hincrby("test:runs", token, 1)
    _lookup_user(token)


def _lookup_user(token: str) -> None:
    raise LookupError(f"no user {token!r}")


@worker("FailOnceWorker")
def fail_once(token: str, padding: str = "", message_chars: int = 0) -> None:
    """Fails the first run of ``token`` with a message of ``message_chars`` characters, then counts its runs.

    ``padding`` only makes the job as large as a test needs.
    """
    if _redis().hincrby("test:attempts", token, 1) == 1:
        raise ValueError("first run fails: " + "m" * message_chars)
    _redis().hincrby("test:runs", token, 1)


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this error cannot be printed")


@worker("UnprintableErrorWorker")
def unprintable_error(token: str) -> None:
    """Raises an exception whose ``str()`` itself raises: a fault of the settle path, not of the job."""
    _redis().hincrby("test:attempts", token, 1)
    raise _UnprintableError()


@worker("WaitWorker")
def wait_for_release(token: str) -> None:
    """Runs until the test pushes to ``test:release:<token>`` (at most 60 s), so a test can look at a running job."""
    _redis().blpop([f"test:release:{token}"], timeout=60)
    _redis().hincrby("test:runs", token, 1)


class _Hopeless(Exception):
    permanent = True


@worker("AddWorker", result_ttl=600)
def add(a: int, b: int) -> dict[str, int]:
    """Keeps its result: the sum."""
    return {"sum": a + b}


@worker("AsyncAddWorker", result_ttl=600)
async def add_async(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@worker("HopelessWorker", result_ttl=600)
def hopeless(reason: str) -> None:
    """Fails for good, so its job dies at once and its result raises."""
    raise _Hopeless(reason)


@worker("SetReturningWorker", result_ttl=600)
def returns_a_set() -> set[int]:
    """Returns what msgpack cannot hold."""
    return {1, 2}


@worker("SlowAddWorker", result_ttl=600)
def slow_add(token: str, a: int) -> int:
    """Returns once the test pushes to ``test:release:<token>``."""
    _redis().blpop([f"test:release:{token}"], timeout=60)
    return a


@worker("AbortableAsyncWorker")
async def abortable_async(token: str) -> None:
    """Reports progress, then waits long enough to be aborted (its task is cancelled)."""
    from flume_rx import current_job

    job = current_job()
    assert job is not None and job.job.args == [token]
    job.progress(0.5, "halfway")
    await asyncio.sleep(60)
    _redis().hincrby("test:runs", token, 1)


@worker("AbortableSyncWorker")
def abortable_sync(token: str) -> None:
    """Reports progress, then loops until its job is aborted, checking the flag as a sync worker must."""
    from flume_rx import current_job

    job = current_job()
    assert job is not None
    job.progress(0.25, "looping")
    deadline = time.monotonic() + 60
    while not job.aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    job.check_aborted()
    _redis().hincrby("test:runs", token, 1)


@worker("AffinityWorker")
def record_affinity(busy_s: float) -> None:
    """Keeps its stage thread busy for ``busy_s``, then records, by process, the CPUs the thread may use."""
    until = time.monotonic() + busy_s
    while time.monotonic() < until:
        sum(range(1000))
    _redis().hset("test:affinity", str(os.getpid()), ",".join(map(str, sorted(os.sched_getaffinity(0)))))
