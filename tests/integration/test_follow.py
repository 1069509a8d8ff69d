"""Following a job after enqueue: ``Flume.job`` and ``flume-rx job`` report where it is, ``Flume.cancel`` and
``flume-rx cancel`` take a waiting job back, against a real worker process and a private Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from flume_rx import Flume
from flume_rx.model import config as config_module
from flume_rx.model.errors import ConfigError
from flume_rx.store import Keys, SyncStore
from flume_rx.surfaces.watch import progress_reports, watch

NS = "follow"
SERVED = "served"
IDLE = "idle"  # no pipeline serves it, so its jobs stay queued
ROOT = Path(__file__).resolve().parents[2]


def _env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "FLUME_TEST_REDIS_URL": redis_url}


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _start_worker(
    redis_url: str, tmp_path: Path, orphan_timeout_ms: int = 15_000, stages: int = 10, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """A worker process serving SERVED; its log goes to ``log`` when given (else the test reads it at stop)."""
    config = tmp_path / "flume.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\nnamespace = "{NS}"\nimports = ["tests.integration.sample_workers"]\n'
        f"orphan_timeout = {orphan_timeout_ms}\n"
        f'[pipelines.main]\nqueue = "{SERVED}"\n'
        f"[pipelines.main.processor]\nstages = {stages}\n"
        # A long first backoff keeps a failed job waiting in the retry set while the test looks at it.
        "[pipelines.main.retry]\nmax_retries = 3\nbackoff_initial = 600000\n"
    )
    if log is None:
        return subprocess.Popen(
            _worker_command(config),
            env=_env(redis_url),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    with log.open("wb") as stderr:  # the child keeps its own copy
        return subprocess.Popen(
            _worker_command(config), env=_env(redis_url), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr
        )


def _worker_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "flume_rx", "worker", "--config", str(config)]


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, (stderr or b"").decode()


@pytest.fixture
def worker_process(redis_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = _start_worker(redis_url, tmp_path)
    yield process
    redis.Redis.from_url(redis_url).lpush("test:release:running", "go")
    _stop(process)


@pytest.fixture
def flume(redis_url: str) -> Iterator[Flume]:
    with Flume(redis_url=redis_url, namespace=NS) as client:
        yield client


def test_a_job_is_followed_through_every_place_it_can_be(
    flume: Flume, worker_process: subprocess.Popen[bytes]
) -> None:
    queued = flume.enqueue(IDLE, "RecordWorker", ["q"])
    scheduled = flume.enqueue_in(IDLE, 3600, "RecordWorker", ["s"])
    running = flume.enqueue(SERVED, "WaitWorker", ["running"])
    retrying = flume.enqueue(SERVED, "FailingWorker", ["r"])
    dead = flume.enqueue(SERVED, "NoSuchWorker", [])
    done = flume.enqueue(SERVED, "RecordWorker", ["d"])
    before = time.time()

    info = flume.job(queued)
    assert (info.state, info.queue, info.job and info.job.args) == ("queued", IDLE, ["q"])
    info = flume.job(scheduled, IDLE)
    assert info.state == "scheduled" and info.at is not None and info.at > before + 3000

    _wait(lambda: flume.job(running).state == "running", "the waiting job to run")
    info = flume.job(running)
    assert info.consumer is not None and info.consumer_alive is True

    _wait(lambda: flume.job(retrying).state == "retry", "the failing job to wait for its retry")
    info = flume.job(retrying)
    assert info.error is not None and info.error.kind == "LookupError" and "no user 'r'" in info.error.message
    assert info.job is not None and info.job.attempt == 1
    assert info.at is not None and info.at > before + 300

    _wait(lambda: flume.job(dead).state == "dead", "the job of an unknown worker to die")
    info = flume.job(dead)
    assert info.error is not None and info.error.kind == "UnknownWorker" and info.at is not None

    # A finished job leaves nothing behind (no per-job record on the hot path), so it is unknown.
    _wait(lambda: flume.stats([SERVED])[SERVED]["processed"] >= 1, "the plain job to finish")
    assert flume.job(done).state == "unknown"
    assert flume.job("0" * 32).state == "unknown"


def test_waiting_jobs_are_cancelled_and_running_ones_are_not(
    flume: Flume, worker_process: subprocess.Popen[bytes], redis_url: str
) -> None:
    queued = flume.enqueue(IDLE, "RecordWorker", ["q"])
    kept = flume.enqueue(IDLE, "RecordWorker", ["k"])
    scheduled = flume.enqueue_at(IDLE, time.time() + 3600, "RecordWorker", ["s"])
    running = flume.enqueue(SERVED, "WaitWorker", ["running"])
    retrying = flume.enqueue(SERVED, "FailingWorker", ["r"])
    _wait(lambda: flume.job(running).state == "running", "the waiting job to run")
    _wait(lambda: flume.job(retrying).state == "retry", "the failing job to wait for its retry")

    for job_id in (queued, scheduled, retrying):
        info = flume.cancel(job_id)
        assert info.state == "cancelled", job_id
        assert info.at is not None and info.job is not None and info.job.id == job_id
        assert flume.job(job_id).state == "cancelled"
    assert flume.cancel(running).state == "running"
    assert flume.cancel("0" * 32).state == "unknown"

    client = redis.Redis.from_url(redis_url)
    idle, served = Keys(NS).of(IDLE), Keys(NS).of(SERVED)
    assert (
        client.llen(idle.queue) == 1 and client.zcard(idle.scheduled) == 0 and client.zcard(served.retry) == 0
    )
    assert flume.job(kept).state == "queued"
    # The record of a cancellation expires rather than accumulating.
    assert 0 < client.pttl(idle.record(queued)) <= 24 * 3600 * 1000


def test_the_cli_shows_a_job_and_cancels_it(flume: Flume, redis_url: str, tmp_path: Path) -> None:
    job_id = flume.enqueue(IDLE, "RecordWorker", ["cli"])
    config = tmp_path / "flume.toml"
    config.write_text(f'redis_url = "{redis_url}"\nnamespace = "{NS}"\n')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flume_rx", "--log-level", "error", *args, "--config", str(config)],
            env=_env(redis_url),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    shown = cli("job", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    row = json.loads(shown.stdout)
    assert (row["state"], row["queue"], row["worker"], row["args"]) == (
        "queued",
        IDLE,
        "RecordWorker",
        ["cli"],
    )

    cancelled = cli("cancel", job_id)
    assert cancelled.returncode == 0 and f"{job_id}: cancelled" in cancelled.stdout
    again = cli("cancel", job_id)  # cancelling twice is no fault
    assert again.returncode == 0 and f"{job_id}: cancelled" in again.stdout
    refused = cli("cancel", "e" * 32)
    assert refused.returncode == 1 and "it is unknown" in refused.stdout
    plain = cli("job", job_id)
    assert plain.returncode == 0 and "cancelled" in plain.stdout
    missing = cli("job", "f" * 32)
    assert missing.returncode == 1 and "unknown" in missing.stdout


def test_a_job_id_that_cannot_be_one_is_refused(flume: Flume) -> None:
    with pytest.raises(ConfigError, match="job id"):
        flume.job("")


@pytest.mark.parametrize("worker_name", ["AbortableAsyncWorker", "AbortableSyncWorker"])
def test_a_running_job_reports_progress_and_is_aborted(
    flume: Flume,
    worker_process: subprocess.Popen[bytes],
    redis_url: str,
    worker_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = flume.enqueue(SERVED, worker_name, ["abort-me"])
    _wait(lambda: flume.job(job_id).progress is not None, "the job to report progress")
    info = flume.job(job_id)
    assert info.state == "running"
    assert (info.progress, info.progress_message) == (
        (0.5, "halfway") if worker_name == "AbortableAsyncWorker" else (0.25, "looping")
    )

    # stats --watch lists it among the running jobs reporting progress.
    config = config_module.parse(
        {"redis_url": redis_url, "namespace": NS, "pipelines": {"m": {"queue": SERVED}}}
    )
    watch(config, as_json=True, iterations=1)
    (line,) = capsys.readouterr().out.splitlines()
    assert [(r["job_id"], r["queue"]) for r in json.loads(line)["progress"]] == [(job_id, SERVED)]

    assert flume.cancel(job_id).state == "running"  # the abort is asked; the worker stops it
    _wait(lambda: flume.job(job_id).state == "cancelled", "the aborted job to be recorded as cancelled")
    with SyncStore.from_url(redis_url, NS) as store:
        assert progress_reports(store, [SERVED]) == []  # over, so no longer listed
    client = redis.Redis.from_url(redis_url)
    try:
        served = Keys(NS).of(SERVED)
        assert client.hget("test:runs", "abort-me") is None  # it stopped where it was
        assert client.zcard(served.retry) == 0 and client.zcard(served.dead) == 0  # no retry, no dead letter
    finally:
        client.close()


@pytest.mark.parametrize("worker_name", ["WaitWorker", "AbortableAsyncWorker"])
def test_an_abort_no_worker_heard_stops_the_job_where_it_is_fetched_next(
    flume: Flume, redis_url: str, tmp_path: Path, worker_name: str
) -> None:
    """The job's worker was killed, so the abort reached no one (Flume.cancel's message was all there was).
    Before: orphan recovery gave the job to the next worker, which ran it to the end."""
    token = "abort-unheard"
    client = redis.Redis.from_url(redis_url)
    first = _start_worker(redis_url, tmp_path, orphan_timeout_ms=1000)
    try:
        job_id = flume.enqueue(SERVED, worker_name, [token])
        _wait(lambda: flume.job(job_id).state == "running", "the job to start")
    finally:
        first.kill()
        first.communicate(timeout=60)
    info = flume.cancel(job_id)
    assert info.state == "running"  # still in the dead worker's in-flight list
    client.lpush(f"test:release:{token}", "go")  # a run of WaitWorker would now end at once
    second = _start_worker(redis_url, tmp_path, orphan_timeout_ms=1000)
    try:
        _wait(lambda: flume.job(job_id).state == "cancelled", "the recovered job to be recorded as cancelled")
        assert client.hget("test:runs", token) is None  # it never ran to its end
        if worker_name == "WaitWorker":
            assert client.llen(f"test:release:{token}") == 1  # nor began: nobody took the release
        served = Keys(NS).of(SERVED)
        assert client.zcard(served.retry) == 0 and client.zcard(served.dead) == 0
    finally:
        _stop(second)
        client.close()


def test_a_job_aborted_while_it_waits_for_a_stage_never_begins(
    flume: Flume, redis_url: str, tmp_path: Path
) -> None:
    """One stage, held by a running job; the next job is fetched and waits for the stage (handed ahead to
    the stage thread's queue): it counts as running, and the abort reaches it before it begins."""
    client = redis.Redis.from_url(redis_url)
    log = tmp_path / "worker.log"
    process = _start_worker(redis_url, tmp_path, stages=1, log=log)
    try:
        first = flume.enqueue(SERVED, "WaitWorker", ["holds-the-stage"])
        _wait(lambda: flume.job(first).state == "running", "the first job to start")
        second = flume.enqueue(SERVED, "RecordWorker", ["aborted-before-it-began"])
        _wait(lambda: flume.job(second).state == "running", "the second job to be fetched")
        assert flume.cancel(second).state == "running"
        _wait(lambda: f"aborting job {second}" in log.read_text(), "the worker to take the abort")
        client.lpush("test:release:holds-the-stage", "go")
        _wait(lambda: flume.job(second).state == "cancelled", "the waiting job to be recorded as cancelled")
        _wait(lambda: client.hget("test:runs", "holds-the-stage") == b"1", "the first job to finish")
        assert client.hget("test:runs", "aborted-before-it-began") is None
    finally:
        _stop(process)
        client.close()


def test_current_job_is_none_outside_a_worker() -> None:
    from flume_rx import current_job

    assert current_job() is None
