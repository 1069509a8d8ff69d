"""arq: worker processes through ``run_worker``, no kept results.

Variant ``""`` keeps arq's defaults (``max_jobs`` 10, ``poll_delay`` 0.5 s: arq polls a sorted set, so a
worker takes at most ``queue_read_limit`` jobs per poll). Variant ``"tuned"`` polls every 10 ms with
``max_jobs`` 100, the two knobs arq's docs offer for a busier worker.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

from benchmarks import probe
from benchmarks.peers._util import BATCH, PY, LoopRunner, broker_url, client

QUEUE = "arq:queue"


async def job(ctx: dict[str, Any], enqueued_at: float = 0.0) -> None:
    await probe.run_async(enqueued_at)


class WorkerSettings:
    """arq reads its worker configuration from a class like this one."""

    functions: ClassVar[list[Any]] = [job]
    keep_result = 0
    max_jobs = 10
    poll_delay = 0.5
    redis_settings: Any = None


def _settings(url: str) -> Any:
    from arq.connections import RedisSettings

    return RedisSettings.from_dsn(url)


class _Producer:
    def __init__(self, url: str) -> None:
        from arq import create_pool

        self._loop = LoopRunner()
        self._pool = self._loop.run(create_pool(_settings(url)))

    def bulk(self, n: int) -> None:
        # arq has no bulk enqueue: its documented call, many at a time on one connection pool.
        async def go() -> None:
            for start in range(0, n, BATCH):
                await asyncio.gather(
                    *(self._pool.enqueue_job("job", 0.0) for _ in range(min(BATCH, n - start)))
                )

        self._loop.run(go())

    def one(self, enqueued_at: float) -> None:
        self._loop.run(self._pool.enqueue_job("job", enqueued_at))

    def close(self) -> None:
        self._loop.run(self._pool.aclose())
        self._loop.close()


def producer(url: str, variant: str) -> _Producer:
    return _Producer(url)


def worker_commands(url: str, processes: int, variant: str) -> list[list[str]]:
    return [[PY, "-m", "benchmarks.peers.arq_peer"] for _ in range(processes)]


def backlog(url: str) -> int:
    value: int = client(url).zcard(QUEUE)  # type: ignore[assignment]
    return value


def main() -> None:
    """Run one arq worker against BENCH_REDIS_URL (arq's Python entry point, ``run_worker``)."""
    from arq.worker import run_worker

    WorkerSettings.redis_settings = _settings(broker_url())
    if os.environ.get("BENCH_VARIANT") == "tuned":
        WorkerSettings.max_jobs = 100
        WorkerSettings.poll_delay = 0.01
    run_worker(WorkerSettings)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
