"""SAQ: ``saq benchmarks.peers.saq_peer.settings`` with its default concurrency (10 jobs per process)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from benchmarks import probe
from benchmarks.peers._util import BATCH, PY, LoopRunner, broker_url, llen

QUEUE = "default"


async def job(ctx: dict[str, Any], *, enqueued_at: float = 0.0) -> None:
    await probe.run_async(enqueued_at)


def _queue(url: str) -> Any:
    from saq import Queue

    return Queue.from_url(url, name=QUEUE)


settings: dict[str, Any] = {
    "functions": [job],
    "concurrency": 10,
}
if os.environ.get("BENCH_REDIS_URL"):
    settings["queue"] = _queue(broker_url())


class _Producer:
    def __init__(self, url: str) -> None:
        self._loop = LoopRunner()
        self._queue = _queue(url)
        self._loop.run(self._queue.connect())

    def bulk(self, n: int) -> None:
        # SAQ's enqueue is one job per call (map() waits for results): many at a time on one connection pool.
        async def go() -> None:
            for start in range(0, n, BATCH):
                await asyncio.gather(
                    *(self._queue.enqueue("job", enqueued_at=0.0) for _ in range(min(BATCH, n - start)))
                )

        self._loop.run(go())

    def one(self, enqueued_at: float) -> None:
        self._loop.run(self._queue.enqueue("job", enqueued_at=enqueued_at))

    def close(self) -> None:
        self._loop.run(self._queue.disconnect())
        self._loop.close()


def producer(url: str, variant: str) -> _Producer:
    return _Producer(url)


def worker_commands(url: str, processes: int, variant: str) -> list[list[str]]:
    return [[PY, "-m", "saq", "benchmarks.peers.saq_peer.settings", "--workers", str(processes), "--quiet"]]


def backlog(url: str) -> int:
    return llen(url, f"saq:{QUEUE}:queued")
