"""What every benchmark job calls, whichever queue runs it: one cheap, identical probe per job.

A job records when it finished (and, when asked, when it started and how long it waited since it was
enqueued) into a process-local deque; a daemon thread ships the records every 50 ms to a *separate* probe
Redis. So the Redis under test sees only the queue's own traffic (its INFO commandstats stay clean), and no
queue pays an extra round trip per job for being counted.

The same thread reads ``bench:delay_ms`` from the probe Redis, so the runner can make the job slower mid-run
(the slow-downstream scenario) without restarting workers.

``BENCH_SHAPE`` gives the job a body in the shape users run (the ``shapes`` scenario): ``incr`` makes one
redis-py ``INCR`` to a third private Redis (``BENCH_WORK_URL``; ``redis.asyncio`` in async jobs), ``sleep1``
and ``await1`` wait 1 ms (``time.sleep`` in sync jobs, ``asyncio.sleep`` in async ones). Unset: a no-op.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections import deque
from typing import Any, Final

import redis

DONE_KEY: Final = "bench:done"
FLUSH_KEY: Final = "bench:flush"
STARTS_KEY: Final = "bench:starts"
WAITS_KEY: Final = "bench:waits"
DELAY_KEY: Final = "bench:delay_ms"
FLUSH_INTERVAL_S: Final = 0.05

_done: deque[float] = deque()
_starts: deque[float] = deque()
_waits: deque[float] = deque()
_record = os.environ.get("BENCH_RECORD") == "1"
_delay_s = float(os.environ.get("BENCH_DELAY_MS", "0")) / 1000.0
SHAPES: Final = ("noop", "incr", "sleep1", "await1")
_shape = os.environ.get("BENCH_SHAPE", "noop") or "noop"
if _shape not in SHAPES:
    raise RuntimeError(f"BENCH_SHAPE must be one of {', '.join(SHAPES)} (got {_shape!r})")
_work_sync: redis.Redis | None = None
_work_async: dict[int, Any] = {}  # one redis.asyncio client per event loop
_sync_client: redis.Redis | None = None
_lock = threading.Lock()
_flush_lock = threading.Lock()
_owner_pid = 0


def _ensure_flusher() -> None:
    global _owner_pid
    # Forking pools (Celery prefork, huey processes) import us in the parent and run jobs in children, where
    # the parent's thread does not exist: start one per process, on its first job.
    if _owner_pid == os.getpid():
        return
    with _lock:
        if _owner_pid == os.getpid():
            return
        _done.clear()
        _starts.clear()
        _waits.clear()
        url = os.environ.get("BENCH_PROBE_URL")
        if not url:
            raise RuntimeError(
                "BENCH_PROBE_URL is not set; run benchmark jobs through `python -m benchmarks`"
            )
        thread = threading.Thread(target=_flush_forever, args=(url,), name="bench-probe", daemon=True)
        thread.start()
        _owner_pid = os.getpid()


def _drain(queue: deque[float]) -> list[float]:
    return [queue.popleft() for _ in range(len(queue))]


def _flush_forever(url: str) -> None:
    client = redis.Redis.from_url(url)
    # Burst-mode workers exit as soon as the queue is empty: ship what is left before the interpreter goes.
    atexit.register(_flush, client)
    while True:
        time.sleep(FLUSH_INTERVAL_S)
        _flush(client)


def _flush(client: redis.Redis) -> None:
    global _delay_s
    with _flush_lock:
        done = _drain(_done)
        starts = _drain(_starts)
        waits = _drain(_waits)
        pipe = client.pipeline(transaction=False)
        if done:
            pipe.incrby(DONE_KEY, len(done))
            pipe.rpush(FLUSH_KEY, f"{len(done)} {min(done)!r} {max(done)!r}")
        if starts:
            pipe.rpush(STARTS_KEY, *starts)
        if waits:
            pipe.rpush(WAITS_KEY, *waits)
        pipe.get(DELAY_KEY)
        *_, delay = pipe.execute()
    if delay is not None:
        _delay_s = float(delay) / 1000.0


def started(enqueued_at: float = 0.0) -> float:
    """Call first thing in a job; returns the seconds the job should pretend to work (0 for no-op)."""
    _ensure_flusher()
    if _record:
        now = time.time()
        _starts.append(now)
        if enqueued_at:
            _waits.append(now - enqueued_at)
    return _delay_s


def finished() -> None:
    """Call last thing in a job."""
    _done.append(time.time())


def flush_now() -> None:
    """Ship the records at once, for a process per job (RQ's forking Worker), which ends with os._exit: no
    thread or atexit handler survives that."""
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(os.environ["BENCH_PROBE_URL"])
    _flush(_sync_client)


def _work_url() -> str:
    url = os.environ.get("BENCH_WORK_URL")
    if not url:
        raise RuntimeError("BENCH_SHAPE=incr needs BENCH_WORK_URL, the Redis the job talks to")
    return url


def run_sync(enqueued_at: float = 0.0) -> None:
    """The whole benchmark job for queues that run plain functions."""
    global _work_sync
    delay = started(enqueued_at)
    if _shape == "incr":
        if _work_sync is None:
            _work_sync = redis.Redis.from_url(_work_url())  # thread-safe: a pool of connections
        _work_sync.incr("bench:hits")
    elif _shape != "noop":
        time.sleep(0.001)
    if delay:
        time.sleep(delay)
    finished()


async def run_async(enqueued_at: float = 0.0) -> None:
    """The whole benchmark job for asyncio queues."""
    import asyncio

    delay = started(enqueued_at)
    if _shape == "incr":
        loop = id(asyncio.get_running_loop())
        client = _work_async.get(loop)
        if client is None:
            import redis.asyncio

            client = _work_async[loop] = redis.asyncio.Redis.from_url(_work_url())
        await client.incr("bench:hits")
    elif _shape != "noop":
        await asyncio.sleep(0.001)
    if delay:
        await asyncio.sleep(delay)
    finished()
