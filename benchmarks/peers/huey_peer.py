"""huey: ``huey_consumer`` with 8 worker threads per process, results off (nobody reads them)."""

from __future__ import annotations

import os
from typing import Any

from benchmarks import probe
from benchmarks.peers._util import PY, broker_url, llen

NAME = "bench"


def make_huey(url: str) -> tuple[Any, Any]:
    from huey import RedisHuey  # type: ignore[import-untyped, unused-ignore]

    hue = RedisHuey(NAME, url=url, results=False)

    @hue.task(name="bench_job")  # type: ignore[untyped-decorator, unused-ignore]
    def bench_job(enqueued_at: float = 0.0) -> None:
        probe.run_sync(enqueued_at)

    return hue, bench_job


huey, _task = make_huey(broker_url()) if os.environ.get("BENCH_REDIS_URL") else (None, None)


class _Producer:
    def __init__(self, url: str) -> None:
        self._huey, self._task = make_huey(url)

    def bulk(self, n: int) -> None:
        # huey has no bulk enqueue: calling the task enqueues it, one LPUSH each.
        task = self._task
        for _ in range(n):
            task(0.0)

    def one(self, enqueued_at: float) -> None:
        self._task(enqueued_at)

    def close(self) -> None:
        pass


def producer(url: str, variant: str) -> _Producer:
    return _Producer(url)


def worker_commands(url: str, processes: int, variant: str) -> list[list[str]]:
    # huey's consumer runs its workers as threads or as processes of one consumer; one consumer per
    # measured process keeps "N processes" comparable with the other queues.
    return [
        [
            PY,
            "-m",
            "huey.bin.huey_consumer",
            "benchmarks.peers.huey_peer.huey",
            "-k",
            "thread",
            "-w",
            "8",
            "-q",
        ]
        for _ in range(processes)
    ]


def backlog(url: str) -> int:
    return llen(url, f"huey.redis.{NAME}")
