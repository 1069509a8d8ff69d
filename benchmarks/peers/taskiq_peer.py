"""taskiq with taskiq-redis's ListQueueBroker (a reliable list queue); ``taskiq worker`` processes."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from benchmarks import probe
from benchmarks.peers._util import BATCH, PY, LoopRunner, broker_url, llen

QUEUE = "taskiq"


def make_broker(url: str) -> tuple[Any, Any]:
    from taskiq_redis import ListQueueBroker

    brk = ListQueueBroker(url, queue_name=QUEUE)

    @brk.task(task_name="bench_job")  # type: ignore[untyped-decorator, unused-ignore]
    async def bench_job(enqueued_at: float = 0.0) -> None:
        await probe.run_async(enqueued_at)

    return brk, bench_job


broker, _task = make_broker(broker_url()) if os.environ.get("BENCH_REDIS_URL") else (None, None)


class _Producer:
    def __init__(self, url: str) -> None:
        self._loop = LoopRunner()
        self._broker, self._task = make_broker(url)
        self._loop.run(self._broker.startup())

    def bulk(self, n: int) -> None:
        # taskiq has no bulk kick: its documented kiq(), many at a time.
        async def go() -> None:
            for start in range(0, n, BATCH):
                await asyncio.gather(*(self._task.kiq(0.0) for _ in range(min(BATCH, n - start))))

        self._loop.run(go())

    def one(self, enqueued_at: float) -> None:
        self._loop.run(self._task.kiq(enqueued_at))

    def close(self) -> None:
        self._loop.run(self._broker.shutdown())
        self._loop.close()


def producer(url: str, variant: str) -> _Producer:
    return _Producer(url)


def worker_commands(url: str, processes: int, variant: str) -> list[list[str]]:
    return [
        [PY, "-m", "taskiq", "worker", "benchmarks.peers.taskiq_peer:broker", "--workers", str(processes),
         "--log-level", "WARNING"]
    ]  # fmt: skip


def backlog(url: str) -> int:
    return llen(url, QUEUE)
