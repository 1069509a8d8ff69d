"""Outcomes that cannot be stored as they are: each costs at most its own job, never the pipeline.

Real worker processes against the private Redis: a retry record over the payload limit, an attempt counter at
msgpack's largest integer, an error whose ``str()`` raises, and args that cannot bind to the worker.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flume_rx import Flume
from flume_rx.model import codec
from flume_rx.model.job import MAX_ATTEMPT, Job
from flume_rx.store.keys import Keys

from .harness import QUEUE, ROOT, WorkerProcess, runs, wait_until, write_config

LIMIT = 20_000
KEYS = Keys("t").of(QUEUE)


@pytest.fixture
def running(redis_url: str, tmp_path: Path) -> Iterator[tuple[WorkerProcess, redis.Redis, Flume, Path]]:
    config = write_config(
        tmp_path / "worker.toml",
        redis_url,
        {"retry": {"max_retries": 3, "backoff_initial": 10, "backoff_max": 20}},
        max_payload_bytes=LIMIT,
    )
    client = redis.Redis.from_url(redis_url)
    flume = Flume(redis_url, "t", max_payload_bytes=LIMIT)
    process = WorkerProcess(config, redis_url)
    try:
        yield process, client, flume, config
    finally:
        process.kill()
        flume.close()
        client.close()


def _goes_on(process: WorkerProcess, client: redis.Redis, flume: Flume, token: str) -> None:
    """The worker still runs jobs after the poison: the pipeline did not stall."""
    flume.enqueue(QUEUE, "RecordWorker", [token])
    wait_until(lambda: runs(client).get(token) == 1, 30, f"{token} to run after the poison")
    assert process.alive(), process.log()
    wait_until(lambda: flume.stats([QUEUE])[QUEUE]["in_flight"] == 0, 30, f"the ack of {token}")
    assert flume.stats([QUEUE])[QUEUE]["queued"] == 0


def test_a_job_just_under_the_limit_that_fails_once_is_retried_with_its_error_cut_to_fit(
    running: tuple[WorkerProcess, redis.Redis, Flume, Path],
) -> None:
    process, client, flume, _ = running
    bare = len(
        codec.encode(Job("0" * 32, QUEUE, "FailOnceWorker", ["big", "", 3000], created_at=time.time()))
    )
    padding = "p" * (LIMIT - bare - 64)
    flume.enqueue(QUEUE, "FailOnceWorker", ["big", padding, 3000])  # accepted: just under the limit

    wait_until(lambda: runs(client).get("big") == 1, 30, "the retried job to run")

    assert int(client.hget("test:attempts", "big") or 0) == 2  # one failure, one retry that ran
    assert flume.stats([QUEUE])[QUEUE]["dead"] == 0
    _goes_on(process, client, flume, "after-big")


def test_a_failing_job_whose_retry_record_cannot_fit_keeps_the_reason_when_it_dies(
    running: tuple[WorkerProcess, redis.Redis, Flume, Path],
) -> None:
    """With no retries left the record goes to the dead letters, its error cut to fit, never dropped."""
    process, client, flume, _ = running
    record = Job("huge-error", QUEUE, "FailOnceWorker", ["dies", "p" * (LIMIT - 400), 30_000], attempt=3)
    client.lpush(KEYS.queue, codec.encode(record, LIMIT))

    wait_until(lambda: flume.stats([QUEUE])[QUEUE]["dead"] == 1, 30, "the job to die")

    (dead,) = flume.dead_list(QUEUE)
    assert dead.id == "huge-error" and dead.attempt == 4 and dead.args == record.args
    assert dead.error is not None and dead.error.kind == "ValueError"
    assert dead.error.message.startswith("first run fails: mmm")
    assert len(client.zrange(KEYS.dead, 0, 0)[0]) <= LIMIT
    _goes_on(process, client, flume, "after-dies")


def test_a_raw_record_with_the_largest_attempt_dies_with_its_reason_and_the_worker_goes_on(
    running: tuple[WorkerProcess, redis.Redis, Flume, Path],
) -> None:
    process, client, flume, _ = running
    record = Job("max-attempt", QUEUE, "FailOnceWorker", ["max"], attempt=2**64 - 1)
    client.lpush(KEYS.queue, codec.encode(record))

    wait_until(lambda: flume.stats([QUEUE])[QUEUE]["dead"] == 1, 30, "the record to die")

    (dead,) = flume.dead_list(QUEUE)
    assert dead.id == "max-attempt" and dead.attempt == MAX_ATTEMPT
    assert dead.error is not None and dead.error.kind == "ValueError"
    _goes_on(process, client, flume, "after-max")


def test_an_unexpected_fault_while_settling_dead_letters_that_job_with_the_reason(
    running: tuple[WorkerProcess, redis.Redis, Flume, Path],
) -> None:
    """The worker's exception cannot even be printed: that one job dies, naming why, and the rest run."""
    process, client, flume, _ = running
    flume.enqueue(QUEUE, "UnprintableErrorWorker", ["unprintable"])

    wait_until(lambda: flume.stats([QUEUE])[QUEUE]["dead"] == 1, 30, "the job to die")

    (dead,) = flume.dead_list(QUEUE)
    assert dead.worker == "UnprintableErrorWorker" and dead.args == ["unprintable"]
    assert dead.error is not None and dead.error.kind == "SettleError"
    assert "this error cannot be printed" in dead.error.message
    assert int(client.hget("test:attempts", "unprintable") or 0) == 1
    _goes_on(process, client, flume, "after-unprintable")


def test_args_that_cannot_bind_to_the_worker_are_dead_lettered_at_once(
    running: tuple[WorkerProcess, redis.Redis, Flume, Path],
) -> None:
    """``flume-rx enqueue jobs RecordWorker`` with no args: a permanent fault, so no retry is spent on it."""
    process, client, flume, config = running
    enqueued = subprocess.run(
        [sys.executable, "-m", "flume_rx", "enqueue", "--config", str(config), QUEUE, "RecordWorker"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
        timeout=60,
    )
    job_id = enqueued.stdout.decode().strip()

    wait_until(lambda: flume.stats([QUEUE])[QUEUE]["dead"] == 1, 30, "the job to die")

    (dead,) = flume.dead_list(QUEUE)
    assert dead.id == job_id and dead.attempt == 1  # its only run
    assert dead.error is not None and dead.error.kind == "BadArguments"
    assert "RecordWorker" in dead.error.message and "token" in dead.error.message
    stats = flume.stats([QUEUE])[QUEUE]
    assert stats["retry"] == 0 and stats["failed"] == 1
    _goes_on(process, client, flume, "after-unbound")
