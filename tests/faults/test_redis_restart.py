"""Redis killed (SIGKILL, AOF fsynced on every write) and restarted under load: nothing lost, one log line."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from flume_rx import Flume
from flume_rx.model.errors import StoreError
from flume_rx.surfaces.embedded import RedisServer

from .harness import QUEUE, WorkerProcess, runs, wait_until, write_config


class _Enqueuer(threading.Thread):
    """Enqueues jobs until stopped, retrying through outages; remembers the jobs Redis confirmed."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.confirmed: list[str] = []
        self.failures = 0
        self.halt = threading.Event()

    def run(self) -> None:
        flume = Flume(self.url, "t")
        i = 0
        try:
            while not self.halt.is_set():
                token = f"e{i}"
                try:
                    flume.enqueue(QUEUE, "RecordWorker", [token, 0.002])
                except StoreError:
                    self.failures += 1
                    time.sleep(min(1.0, 0.05 * 2 ** min(5, self.failures)))
                    continue  # ambiguous: Redis may have taken it; only confirmed jobs are checked
                self.confirmed.append(token)
                i += 1
                time.sleep(0.001)
        finally:
            flume.close()


@pytest.mark.slow
def test_workers_and_enqueuers_ride_out_a_redis_crash(
    fresh_redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    server = fresh_redis_server
    records = redis.Redis.from_url(redis_url)  # the run log lives on another server, which stays up
    # With a shared rate limit too: its token window lives in the same Redis and must ride out the crash.
    pipeline = {
        "max_demand": 20,
        "processor": {"stages": 4},
        "rate_limiter": {"allowed": 5000, "period": 1000},
    }
    config = write_config(tmp_path / "worker.toml", server.url, pipeline)
    with Flume(server.url, "t") as flume:
        flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"b{i}", 0.002]) for i in range(3000)])
    workers = [WorkerProcess(config, redis_url, name=f"w{i}") for i in range(2)]
    enqueuer = _Enqueuer(server.url)
    enqueuer.start()
    try:
        wait_until(lambda: records.hlen("test:runs") >= 500, 60, "500 jobs done before the crash")
        server.kill()
        # Restart only once every worker and the enqueuer have met the outage, so the test is of riding one out.
        wait_until(
            lambda: enqueuer.failures > 0 and all("Redis unreachable" in w.log() for w in workers),
            60,
            "every worker and the enqueuer to notice the outage",
        )
        server.start()
        before = len(enqueuer.confirmed)
        wait_until(lambda: len(enqueuer.confirmed) > before + 100, 60, "the enqueuer to resume")
        enqueuer.halt.set()
        enqueuer.join(10)
        expected = {f"b{i}" for i in range(3000)} | set(enqueuer.confirmed)
        wait_until(lambda: expected <= set(runs(records)), 120, "every confirmed job to run")
        for worker in workers:
            assert worker.terminate() == 0, worker.log()
    finally:
        enqueuer.halt.set()
        for worker in workers:
            worker.kill()

    assert enqueuer.failures > 0  # the enqueuer did meet the outage
    for worker in workers:
        log = worker.log()
        assert "Traceback" not in log, log
        # One line when Redis goes, one when it is back: not one per loop, call or retry.
        assert log.count("Redis unreachable") == 1, log
        assert log.count("Redis reachable again") == 1, log
        assert "password" not in log.lower()
