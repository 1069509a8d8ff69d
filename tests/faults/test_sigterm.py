"""SIGTERM under load: stop fetching, finish or give back within shutdown_timeout, exit 0, nothing held."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

from flume_rx import Flume
from flume_rx.store.keys import Keys

from .harness import QUEUE, WorkerProcess, leftover_keys, runs, wait_until, write_config

JOBS = 1500


def _accounted(client: redis.Redis, flume: Flume, tokens: set[str]) -> None:
    """Every job either ran or waits on the queue: none is held by a stopped worker or lost."""
    done = set(runs(client))
    stats = flume.stats([QUEUE])[QUEUE]
    assert stats["in_flight"] == 0
    assert leftover_keys(client) == []
    assert done <= tokens
    assert len(done) + stats["queued"] >= len(tokens)
    queued = {job_token for job_token in _queued_tokens(client)}
    assert done | queued == tokens


def _queued_tokens(client: redis.Redis) -> list[str]:
    from flume_rx.model import codec

    return [str(codec.decode(p).args[0]) for p in client.lrange(Keys("t").of(QUEUE).queue, 0, -1)]


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_mid_drain_exits_0_and_holds_nothing(redis_url: str, tmp_path: Path, processes: int) -> None:
    client = redis.Redis.from_url(redis_url)
    config = write_config(
        tmp_path / "worker.toml",
        redis_url,
        {"max_demand": 40, "processor": {"stages": 8}},
        shutdown_timeout=5000,
    )
    flume = Flume(redis_url, "t")
    tokens = {f"s{i}" for i in range(JOBS)}
    flume.bulk_enqueue(QUEUE, [("RecordWorker", [token, 0.05]) for token in sorted(tokens)])
    worker = WorkerProcess(config, redis_url, extra_args=("--processes", str(processes)))
    try:
        wait_until(lambda: client.hlen("test:runs") >= 100, 60, "100 jobs done")
        assert flume.stats([QUEUE])[QUEUE]["in_flight"] > 0  # the stop happens with jobs held
        code = worker.terminate(timeout_s=60)
    finally:
        worker.kill()
    assert code == 0, worker.log()
    assert "Traceback" not in worker.log()
    _accounted(client, flume, tokens)
    assert client.hlen("test:runs") < JOBS  # it stopped fetching rather than draining the queue


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_while_the_worker_starts_exits_0_and_leaves_every_job_queued(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    # Starting takes seconds on a loaded machine (imports, config, Redis): a SIGTERM then, before the event
    # loop handles it, ended the process by the default action (exit -15).
    client = redis.Redis.from_url(redis_url)
    gate = tmp_path / "gate"
    monkeypatch.setenv("FLUME_TEST_IMPORT_GATE", str(gate))
    config = write_config(
        tmp_path / "worker.toml",
        redis_url,
        imports=["tests.integration.sample_workers", "tests.faults.gated_import"],
    )
    flume = Flume(redis_url, "t")
    tokens = {f"early{i}" for i in range(50)}
    flume.bulk_enqueue(QUEUE, [("RecordWorker", [token]) for token in sorted(tokens)])
    worker = WorkerProcess(config, redis_url, extra_args=("--processes", str(processes)))
    try:
        # Held in the middle of its start-up, importing the worker modules, when the SIGTERM comes.
        wait_until(gate.with_suffix(".reached").exists, 60, "the worker to import its worker modules")
        worker.process.send_signal(signal.SIGTERM)
        gate.touch()
        code = worker.process.wait(60)
    finally:
        gate.touch()
        worker.kill()
    assert code == 0, worker.log()
    assert "Traceback" not in worker.log()
    assert runs(client) == {}  # stopped before fetching anything
    _accounted(client, flume, tokens)
    assert flume.stats([QUEUE])[QUEUE]["queued"] == len(tokens)


def test_jobs_running_past_shutdown_timeout_go_back_to_the_queue(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    config = write_config(
        tmp_path / "worker.toml",
        redis_url,
        {"max_demand": 10, "processor": {"stages": 4}},
        shutdown_timeout=300,
    )
    flume = Flume(redis_url, "t")
    tokens = {f"long{i}" for i in range(20)}
    flume.bulk_enqueue(QUEUE, [("RecordWorker", [token, 120.0]) for token in sorted(tokens)])
    worker = WorkerProcess(config, redis_url)
    try:
        wait_until(lambda: flume.stats([QUEUE])[QUEUE]["in_flight"] >= 4, 30, "the worker to run 4 jobs")
        code = worker.terminate(timeout_s=30)
    finally:
        worker.kill()
    assert code == 0, worker.log()
    assert "returned after the shutdown timeout" in worker.log()
    assert "still running after shutdown_timeout" in worker.log()  # it did not wait for the hung jobs
    stats = flume.stats([QUEUE])[QUEUE]
    assert stats["queued"] == 20 and stats["in_flight"] == 0  # the running ones and any waiting are all back
    assert leftover_keys(client) == []


def test_sigterm_with_redis_gone_still_stops_within_shutdown_timeout(
    redis_url: str, fresh_redis_server: Any, tmp_path: Path
) -> None:
    """Handing the unstarted jobs back waited through the outage like any settle, forever: a worker whose Redis
    was gone ignored SIGTERM. Now it gives up at shutdown_timeout (the jobs come back as orphans)."""
    record = redis.Redis.from_url(redis_url)  # the jobs' record lives on another server, which stays up
    config = write_config(
        tmp_path / "worker.toml",
        fresh_redis_server.url,
        {"max_demand": 20, "processor": {"stages": 1}},  # one job runs, the others wait unstarted
        shutdown_timeout=1000,
    )
    with Flume(fresh_redis_server.url, "t") as flume:
        flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"t{i}", 0.5]) for i in range(40)])
    worker = WorkerProcess(config, redis_url)
    try:
        wait_until(lambda: record.llen("test:starts") > 0, 60, "the first job to start")
        fresh_redis_server.kill()
        wait_until(lambda: "unreachable" in worker.log(), 60, "the worker to notice the outage")
        assert worker.terminate(timeout_s=60) == 0, worker.log()
    finally:
        worker.kill()
    assert "come back as orphans" in worker.log()
    record.close()


def test_the_store_closes_only_after_the_background_tasks_have_ended(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI saw a stop log a Traceback: promotion was mid-call when the store closed under it. A cancelled task
    only ends at its next step, so closing right after ``cancel()`` raced it, and on 3.11 ``wait_for`` can
    hand the closed connection's AttributeError out instead of the cancellation. Every background task must
    be over before the connections go."""
    from flume_rx.model import config as config_module
    from flume_rx.store import RedisStore
    from flume_rx.surfaces.runtime import WorkerRuntime

    config = config_module.parse(
        {"redis_url": redis_url, "namespace": "t", "pipelines": {"main": {"queue": QUEUE}}}
    )
    runtime = WorkerRuntime(config, block_s=0.05)
    still_running: list[str] = []
    close = RedisStore.aclose

    async def close_and_record(self: RedisStore) -> None:
        current = asyncio.current_task()
        still_running.extend(
            t.get_coro().__qualname__  # type: ignore[union-attr]
            for t in asyncio.all_tasks()
            if t is not current and not t.done()
        )
        await close(self)

    monkeypatch.setattr(RedisStore, "aclose", close_and_record)

    async def run_then_stop() -> None:
        task = asyncio.create_task(runtime.run())
        await asyncio.sleep(0.5)
        runtime.stop()
        await task

    asyncio.run(run_then_stop())
    assert [name for name in still_running if "forever" in name] == []


def test_a_background_task_that_drops_one_cancellation_still_ends_before_the_store_closes() -> None:
    """On 3.11, redis-py's ``wait_for`` around a socket write drops a cancel that lands as the write
    completes; the stop then waited forever on a task that had gone on looping (the SIGTERM-at-start test
    hung). The cancel is repeated until the task is over."""
    from flume_rx.surfaces.runtime import _ended

    loops: list[int] = []

    async def drops_the_first_cancel() -> None:
        dropped = False
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if dropped:
                    raise
                dropped = True  # as wait_for does when its inner call has just completed
            loops.append(1)

    async def main() -> bool:
        task = asyncio.create_task(drops_the_first_cancel())
        await asyncio.sleep(0.05)
        await asyncio.wait_for(_ended([task]), timeout=5)
        return task.cancelled()

    assert asyncio.run(main())
    assert loops  # it did run, and went on after the first cancel
