"""Results kept for workers that ask (``@worker(result_ttl=...)``): ``Flume.result`` and ``Flume.aresult`` wait
for them on the message the job's settle publishes, against a real worker process and a private Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flume_rx import (
    ConfigError,
    Flume,
    JobCancelled,
    JobFailed,
    ResultTimeout,
    ResultUnavailable,
    worker,
)
from flume_rx.model.registry import unregister
from flume_rx.store import Keys

NS = "results"
Q = "kept"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker_process(redis_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    config = tmp_path / "flume.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\nnamespace = "{NS}"\nimports = ["tests.integration.sample_workers"]\n'
        f'[pipelines.main]\nqueue = "{Q}"\nprocessor = {{ stages = 4 }}\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "flume_rx", "worker", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "FLUME_TEST_REDIS_URL": redis_url},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    yield process
    with redis.Redis.from_url(redis_url) as client:
        client.lpush("test:release:slow", "go")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def flume(redis_url: str) -> Iterator[Flume]:
    with Flume(redis_url=redis_url, namespace=NS) as client:
        yield client


def test_results_of_sync_and_async_workers_are_returned(
    flume: Flume, worker_process: subprocess.Popen[bytes], raw: redis.Redis
) -> None:
    sync_id = flume.enqueue(Q, "AddWorker", [2, 3])
    async_id = flume.enqueue(Q, "AsyncAddWorker", [4, 5])
    assert flume.result(sync_id, Q, timeout=60) == {"sum": 5}
    assert asyncio.run(flume.aresult(async_id, timeout=60)) == 9  # the queue found by lookup
    info = flume.job(sync_id)
    assert (info.state, info.queue, info.result) == ("done", Q, {"sum": 5})
    assert info.at is not None and info.at > time.time() - 120
    ttl_ms = raw.pttl(Keys(NS).of(Q).record(sync_id))
    assert 590_000 < ttl_ms <= 600_000


def test_a_dead_job_raises_its_error_from_result(
    flume: Flume, worker_process: subprocess.Popen[bytes]
) -> None:
    job_id = flume.enqueue(Q, "HopelessWorker", ["no such mailbox"])
    with pytest.raises(JobFailed, match="no such mailbox") as failed:
        flume.result(job_id, Q, timeout=60)
    assert failed.value.kind == "_Hopeless" and "hopeless" in failed.value.traceback
    assert flume.job(job_id).state == "dead"


def test_a_result_msgpack_cannot_hold_sends_the_job_to_the_dead_letters(
    flume: Flume, worker_process: subprocess.Popen[bytes]
) -> None:
    job_id = flume.enqueue(Q, "SetReturningWorker", [])
    with pytest.raises(JobFailed, match="cannot be kept as a result"):
        flume.result(job_id, Q, timeout=60)


def test_a_wait_times_out_and_a_second_wait_gets_the_result(
    flume: Flume, worker_process: subprocess.Popen[bytes], raw: redis.Redis
) -> None:
    job_id = flume.enqueue(Q, "SlowAddWorker", ["slow", 7])
    started = time.monotonic()
    with pytest.raises(ResultTimeout, match=job_id):
        flume.result(job_id, Q, timeout=0.5)
    assert time.monotonic() - started >= 0.5
    # Released from another thread while the second wait blocks on the message.
    release = threading.Timer(0.3, lambda: raw.lpush("test:release:slow", "go"))
    release.start()
    assert flume.result(job_id, Q, timeout=60) == 7
    release.join()


def test_no_result_to_wait_for(
    flume: Flume, worker_process: subprocess.Popen[bytes], raw: redis.Redis
) -> None:
    with pytest.raises(ResultUnavailable, match="never enqueued"):
        flume.result("0" * 32, Q, timeout=5)
    with pytest.raises(ResultUnavailable, match="no known queue"):
        flume.result("0" * 32, timeout=5)
    plain = flume.enqueue(Q, "RecordWorker", ["plain"])
    deadline = time.monotonic() + 60
    while flume.stats([Q])[Q]["processed"] < 1:
        assert time.monotonic() < deadline, "the plain job did not finish"
        time.sleep(0.05)
    # A worker without result_ttl writes nothing per job: no record, so nothing to wait for.
    assert not list(raw.scan_iter(match=f"{{{NS}:{Q}}}:job:*"))
    with pytest.raises(ResultUnavailable, match="result_ttl"):
        flume.result(plain, Q, timeout=5)


def test_a_cancelled_job_has_no_result(flume: Flume) -> None:
    job_id = flume.enqueue("nobody-serves-this", "AddWorker", [1, 1])
    assert flume.cancel(job_id).state == "cancelled"
    with pytest.raises(JobCancelled):
        flume.result(job_id, timeout=5)


def test_result_ttl_is_checked() -> None:
    with pytest.raises(ConfigError, match="result_ttl"):
        worker("BadTtl", result_ttl=0)(lambda: None)
    with pytest.raises(ConfigError, match="batch"):
        worker("BatchTtl", batch=True, result_ttl=10)(lambda batch: None)
    unregister("BadTtl")
    unregister("BatchTtl")
