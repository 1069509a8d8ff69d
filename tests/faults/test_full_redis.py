"""A full Redis (maxmemory with noeviction) is drained, never a trap: real worker processes against it.

Fetching and acking free memory, so they must work when Redis refuses every write that grows it. The sample
workers record their runs in the session's Redis, as the full one would refuse them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flume_rx import Flume
from flume_rx.model.errors import StoreError
from flume_rx.store import Keys
from flume_rx.surfaces.embedded import RedisServer

from .harness import QUEUE, WorkerProcess, runs, wait_until, write_config

PADDING = "p" * 2000


@pytest.fixture
def full_server() -> Iterator[RedisServer]:
    with RedisServer(extra_args=["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]) as server:
        yield server


def _fill(flume: Flume, url: str) -> set[str]:
    """Enqueue jobs until Redis refuses them; returns the tokens of the jobs it took."""
    tokens: set[str] = set()
    for chunk in range(10_000):
        batch = [f"j{chunk}-{i}" for i in range(50)]
        try:
            flume.bulk_enqueue(QUEUE, [("RecordWorker", [token, 0.0, PADDING]) for token in batch])
        except StoreError as exc:
            assert "maxmemory" in str(exc)
            break
        tokens.update(batch)
    # Just past the limit, a freed reply buffer can bring Redis back under it: set the limit below what it
    # holds, so it stays full until jobs are acked.
    client = redis.Redis.from_url(url)
    client.config_set("maxmemory", client.info("memory")["used_memory"] - 256 * 1024)
    client.close()
    queued = flume.stats([QUEUE])[QUEUE]["queued"]
    # A refused bulk call may have written some of its chunks: those jobs are queued and count as well.
    return tokens | {f"extra-{i}" for i in range(queued - len(tokens))}


def _drained(record: redis.Redis, flume: Flume, expected: int) -> bool:
    stats = flume.stats([QUEUE])[QUEUE]
    return len(runs(record)) >= expected and stats["queued"] == 0 and stats["in_flight"] == 0


def test_a_running_worker_drains_a_full_redis_and_its_acks_land(
    full_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    record = redis.Redis.from_url(redis_url)
    flume = Flume(full_server.url, "t")
    config = write_config(tmp_path / "worker.toml", full_server.url)
    flume.pause(QUEUE)  # fill first, so the running worker meets a Redis that is full
    worker = WorkerProcess(config, redis_url)
    try:
        wait_until(lambda: len(flume.consumers([QUEUE])) == 1, 30, "the worker to join")
        queued = flume.stats([QUEUE])[QUEUE]["queued"] + len(_fill(flume, full_server.url))
        assert queued > 1000
        flume.resume(QUEUE)  # a DEL: Redis takes it when full

        wait_until(lambda: _drained(record, flume, queued), 120, "the full Redis to be drained")

        assert worker.alive(), worker.log()
        stats = flume.stats([QUEUE])[QUEUE]
        assert stats["processed"] == len(runs(record))  # every ack landed and was counted
        code = worker.terminate()
    finally:
        worker.kill()
        flume.close()
    assert code == 0, worker.log()


def test_a_worker_started_against_a_full_redis_does_not_exit_and_drains_it(
    full_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    record = redis.Redis.from_url(redis_url)
    flume = Flume(full_server.url, "t")
    config = write_config(tmp_path / "worker.toml", full_server.url)
    queued = len(_fill(flume, full_server.url))
    worker = WorkerProcess(config, redis_url, extra_args=("--processes", "2"))
    try:
        wait_until(lambda: _drained(record, flume, queued), 120, "the full Redis to be drained")

        assert worker.alive(), worker.log()
        assert "starting a new one" not in worker.log()  # no child crashed and was replaced
        code = worker.terminate()
    finally:
        worker.kill()
        flume.close()
    assert code == 0, worker.log()
    assert "Traceback" not in worker.log()


def test_a_worker_whose_first_heartbeat_is_refused_waits_and_does_not_exit(
    redis_url: str, tmp_path: Path
) -> None:
    """Redis refuses the heartbeat (here: the consumers key holds a string): outage log and backoff, then on."""
    client = redis.Redis.from_url(redis_url)
    client.set(Keys("t").of("jobs").consumers, "not a sorted set")
    flume = Flume(redis_url, "t")
    worker = WorkerProcess(write_config(tmp_path / "worker.toml", redis_url), redis_url)
    try:
        wait_until(lambda: "Redis answered with an error" in worker.log(), 30, "the outage to be logged")
        assert worker.alive(), worker.log()
        client.delete(Keys("t").of("jobs").consumers)
        flume.enqueue(QUEUE, "RecordWorker", ["after"])
        wait_until(lambda: runs(client).get("after") == 1, 30, "a job once Redis takes the heartbeat")
        code = worker.terminate()
    finally:
        worker.kill()
        flume.close()
    assert code == 0, worker.log()


def test_a_rate_limited_pipeline_drains_a_full_redis(
    full_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    """Taking tokens writes to the shared window: that must not stall a pipeline on a full Redis either."""
    record = redis.Redis.from_url(redis_url)
    flume = Flume(full_server.url, "t")
    config = write_config(
        tmp_path / "worker.toml",
        full_server.url,
        {"rate_limiter": {"allowed": 100_000, "period": 1000}},
    )
    queued = len(_fill(flume, full_server.url))
    worker = WorkerProcess(config, redis_url)
    try:
        wait_until(lambda: _drained(record, flume, queued), 120, "the full Redis to be drained")
        assert worker.alive(), worker.log()
        code = worker.terminate()
    finally:
        worker.kill()
        flume.close()
    assert code == 0, worker.log()
