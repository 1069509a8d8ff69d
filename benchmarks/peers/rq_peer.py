"""RQ: ``rq worker`` processes, stopped by the runner once the backlog is done.

SimpleWorker (no fork per job) is the throughput configuration; the default forking Worker is measured too.
"""

from __future__ import annotations

import os
from typing import Any

import redis

from benchmarks import probe
from benchmarks.peers._util import BATCH, PY, llen

QUEUE = "default"


_FORKED = os.environ.get("BENCH_VARIANT") == "fork"


def job(enqueued_at: float = 0.0) -> None:
    probe.run_sync(enqueued_at)
    if _FORKED:
        probe.flush_now()


class _Producer:
    def __init__(self, url: str) -> None:
        from rq import Queue

        self._client = redis.Redis.from_url(url)
        self._queue = Queue(QUEUE, connection=self._client)

    def bulk(self, n: int) -> None:
        from rq import Queue

        for start in range(0, n, BATCH):
            datas: list[Any] = [
                Queue.prepare_data(job, (0.0,), result_ttl=0) for _ in range(min(BATCH, n - start))
            ]
            self._queue.enqueue_many(datas)

    def one(self, enqueued_at: float) -> None:
        self._queue.enqueue(job, enqueued_at, result_ttl=0)

    def close(self) -> None:
        self._client.close()


def producer(url: str, variant: str) -> _Producer:
    return _Producer(url)


def worker_commands(url: str, processes: int, variant: str) -> list[list[str]]:
    worker_class = "rq.worker.SimpleWorker" if variant == "simple" else "rq.Worker"
    return [
        [PY, "-m", "rq.cli", "worker", "--url", url, "-w", worker_class, "--quiet", QUEUE]
        for _ in range(processes)
    ]


def backlog(url: str) -> int:
    return llen(url, f"rq:queue:{QUEUE}")
