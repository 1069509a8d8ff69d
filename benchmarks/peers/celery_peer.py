"""Celery with the Redis broker. One ``celery worker`` node per measured process.

``prefork`` (the default pool, concurrency 1 per node so "N processes" means N job-running processes) and
``threads`` (8 threads in one process) are both measured for throughput. Results are ignored
(``task_ignore_result``), as Celery's optimizing guide advises when nobody reads them. The rate-limit variant
uses the task's ``rate_limit``, which Celery enforces per worker node: 3 nodes at 400/3 per second each.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks import probe
from benchmarks.peers._util import PY, broker_url, llen

QUEUE = "celery"
LIMIT = 400
LIMIT_PROCESSES = 3


def make_app(url: str) -> Any:
    from celery import Celery  # type: ignore[import-untyped, unused-ignore]

    app = Celery("bench", broker=url)
    app.conf.update(
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=4,
    )

    @app.task(name="bench_job")  # type: ignore[untyped-decorator, unused-ignore]
    def bench_job(enqueued_at: float = 0.0) -> None:
        probe.run_sync(enqueued_at)

    @app.task(name="bench_limited", rate_limit=f"{LIMIT / LIMIT_PROCESSES:.4f}/s")  # type: ignore[untyped-decorator, unused-ignore]
    def bench_limited(enqueued_at: float = 0.0) -> None:
        probe.run_sync(enqueued_at)

    return app


app = make_app(broker_url()) if os.environ.get("BENCH_REDIS_URL") else None


class _Producer:
    def __init__(self, url: str, variant: str) -> None:
        self._app = make_app(url)
        self._task = self._app.tasks["bench_limited" if variant == "rate_limit" else "bench_job"]

    def bulk(self, n: int) -> None:
        # Celery has no bulk send (a group publishes one message per task): one producer connection reused.
        with self._app.producer_or_acquire() as producer:
            apply = self._task.apply_async
            for _ in range(n):
                apply((0.0,), producer=producer)

    def one(self, enqueued_at: float) -> None:
        self._task.apply_async((enqueued_at,))

    def close(self) -> None:
        self._app.close()


def producer(url: str, variant: str) -> _Producer:
    return _Producer(url, variant)


def worker_commands(url: str, processes: int, variant: str) -> list[list[str]]:
    base = [PY, "-m", "celery", "-A", "benchmarks.peers.celery_peer", "worker", "--loglevel", "WARNING"]
    quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if variant == "threads":
        return [[*base, *quiet, "--pool", "threads", "--concurrency", "8", "-n", "bench-threads@%h"]]
    return [
        [*base, *quiet, "--pool", "prefork", "--concurrency", "1", "-n", f"bench{i}@%h"]
        for i in range(processes)
    ]


def backlog(url: str) -> int:
    return llen(url, QUEUE)
