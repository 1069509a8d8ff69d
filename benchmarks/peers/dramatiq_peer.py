"""Dramatiq with its Redis broker: ``dramatiq`` CLI, one process per worker process, 8 threads (its default).

The rate-limit variants wrap the job in Dramatiq's own Redis-backed limiters (window or bucket) shared by all
processes. A job that is refused waits 10 ms and asks again, inside the job: the documented alternative,
raising ``RateLimitExceeded`` into the Retries middleware, backs off for seconds: it could not keep 400/s.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import probe
from benchmarks.peers._util import PY, broker_url, llen

QUEUE = "default"
LIMIT = 400

_broker: Any = None
_limiter: Any = None


def _setup(url: str, variant: str) -> Any:
    global _broker, _limiter
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    _broker = RedisBroker(url=url)  # type: ignore[no-untyped-call, unused-ignore]
    dramatiq.set_broker(_broker)
    if variant in ("window", "bucket"):
        from dramatiq.rate_limits import BucketRateLimiter, WindowRateLimiter
        from dramatiq.rate_limits.backends import RedisBackend

        backend = RedisBackend(url=url)
        if variant == "window":
            _limiter = WindowRateLimiter(  # type: ignore[no-untyped-call, unused-ignore]
                backend, "bench-window", limit=LIMIT, window=1
            )
        else:
            _limiter = BucketRateLimiter(  # type: ignore[no-untyped-call, unused-ignore]
                backend, "bench-bucket", limit=LIMIT, bucket=1000
            )
    return dramatiq


def _define_actors(dramatiq: Any) -> tuple[Any, Any]:
    @dramatiq.actor(actor_name="bench_job", queue_name=QUEUE, max_retries=0)  # type: ignore[untyped-decorator, unused-ignore]
    def bench_job(enqueued_at: float = 0.0) -> None:
        probe.run_sync(enqueued_at)

    @dramatiq.actor(actor_name="bench_limited", queue_name=QUEUE, max_retries=0)  # type: ignore[untyped-decorator, unused-ignore]
    def bench_limited(enqueued_at: float = 0.0) -> None:
        while True:
            with _limiter.acquire(raise_on_failure=False) as acquired:
                if acquired:
                    probe.run_sync(enqueued_at)
                    return
            time.sleep(0.01)

    return bench_job, bench_limited


class _Producer:
    def __init__(self, url: str, variant: str) -> None:
        plain, limited = _define_actors(_setup(url, variant))
        self._actor = limited if variant in ("window", "bucket") else plain

    def bulk(self, n: int) -> None:
        # Dramatiq has no bulk enqueue (group().run() sends one by one too): its documented send().
        send = self._actor.send
        for _ in range(n):
            send(0.0)

    def one(self, enqueued_at: float) -> None:
        self._actor.send(enqueued_at)

    def close(self) -> None:
        _broker.close()


def producer(url: str, variant: str) -> _Producer:
    return _Producer(url, variant)


def worker_commands(url: str, processes: int, variant: str) -> list[list[str]]:
    app = "benchmarks.peers.dramatiq_app"
    return [[PY, "-m", "dramatiq", app, "--processes", str(processes), "--threads", "8"]]


def backlog(url: str) -> int:
    return llen(url, f"dramatiq:{QUEUE}")


def worker_module() -> None:
    """Configure the broker and actors in a worker process (the runner sets BENCH_VARIANT)."""
    import os

    _define_actors(_setup(broker_url(), os.environ.get("BENCH_VARIANT", "")))
