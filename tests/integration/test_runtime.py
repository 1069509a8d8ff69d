"""End-to-end: jobs through the worker runtime on a private Redis, in this process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis

from flume_rx import BatchFailed, Flume, worker
from flume_rx import operators as fo
from flume_rx.model import config as config_module
from flume_rx.model.registry import unregister
from flume_rx.model.telemetry import Event
from flume_rx.store.keys import Keys
from flume_rx.surfaces.runtime import WorkerRuntime

QUEUE = "jobs"


@pytest.fixture
def calls() -> Any:
    seen: list[tuple[Any, ...]] = []
    lock = threading.Lock()
    names: list[str] = []

    def register(name: str, fn: Any, *, batch: bool = False) -> None:
        worker(name, batch=batch)(fn)
        names.append(name)

    yield seen, lock, register
    for name in names:
        unregister(name)


def _config(redis_url: str, **pipeline: Any) -> config_module.FlumeConfig:
    table: dict[str, Any] = {"queue": QUEUE, "max_demand": 20, "processor": {"stages": 4}}
    table.update(pipeline)
    return config_module.parse(
        {
            "redis_url": redis_url,
            "namespace": "t",
            "orphan_timeout": 1000,
            "shutdown_timeout": 2000,
            "pipelines": {"main": table},
        }
    )


def _run(runtime: WorkerRuntime, until: Any = None, timeout_s: float = 30.0) -> None:
    async def main() -> None:
        task = asyncio.create_task(runtime.run())
        if until is not None:
            deadline = time.monotonic() + timeout_s
            while not until() and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.05)
            runtime.stop()
        await asyncio.wait_for(task, timeout_s)

    asyncio.run(main())


def test_burst_drains_every_job_once_with_async_and_sync_workers(redis_url: str, calls: Any) -> None:
    seen, lock, register = calls

    async def async_job(n: int) -> None:
        seen.append(("async", n))

    def sync_job(n: int) -> None:
        with lock:
            seen.append(("sync", n))

    register("AsyncJob", async_job)
    register("SyncJob", sync_job)
    flume = Flume(redis_url, "t")
    flume.bulk_enqueue(QUEUE, [("AsyncJob" if i % 2 else "SyncJob", [i]) for i in range(400)])

    _run(WorkerRuntime(_config(redis_url), burst=True))

    assert sorted(n for _, n in seen) == list(range(400))
    stats = flume.stats([QUEUE])[QUEUE]
    assert stats["processed"] == 400
    assert stats["queued"] == 0 and stats["in_flight"] == 0


def test_in_flight_never_exceeds_max_demand_with_a_slow_worker(redis_url: str, calls: Any) -> None:
    seen, _, register = calls
    client = redis.Redis.from_url(redis_url)
    peaks: list[int] = []
    flume = Flume(redis_url, "t")

    async def slow(n: int) -> None:
        peaks.append(flume.stats([QUEUE])[QUEUE]["in_flight"])
        await asyncio.sleep(0.005)
        seen.append(n)

    register("Slow", slow)
    flume.bulk_enqueue(QUEUE, [("Slow", [i]) for i in range(300)])
    config = _config(redis_url, max_demand=7, processor={"stages": 5})

    _run(WorkerRuntime(config, burst=True))

    assert len(seen) == 300
    assert max(peaks) <= 7
    assert client.llen(Keys("t").of(QUEUE).queue) == 0


def test_failures_retry_with_backoff_then_go_to_the_dead_letters(redis_url: str, calls: Any) -> None:
    *_, register = calls
    attempts: Counter[int] = Counter()

    async def always_fails(n: int) -> None:
        attempts[n] += 1
        raise ValueError(f"boom {n}")

    register("Fails", always_fails)
    flume = Flume(redis_url, "t")
    flume.bulk_enqueue(QUEUE, [("Fails", [i]) for i in range(5)])
    config = _config(redis_url, retry={"max_retries": 3, "backoff_initial": 10, "backoff_max": 40})

    _run(WorkerRuntime(config), until=lambda: flume.stats([QUEUE])[QUEUE]["dead"] == 5)

    assert attempts == dict.fromkeys(range(5), 4)  # max_retries = 3 means 4 attempts
    dead = flume.dead_list(QUEUE)
    assert len(dead) == 5
    for job in dead:
        assert job.attempt == 4
        assert job.error is not None and job.error.kind == "ValueError" and "boom" in job.error.message
        assert "always_fails" in job.error.traceback


def test_unknown_worker_and_garbage_go_to_the_dead_letters_and_valid_jobs_continue(
    redis_url: str, calls: Any
) -> None:
    seen, _, register = calls

    async def ok(n: int) -> None:
        seen.append(n)

    register("Ok", ok)
    flume = Flume(redis_url, "t")
    flume.enqueue(QUEUE, "Ok", [1])
    flume.enqueue(QUEUE, "NobodyRegisteredThis", [2])
    redis.Redis.from_url(redis_url).lpush(Keys("t").of(QUEUE).queue, b"\xc1not msgpack", b"\x93\x01\x02\x03")
    flume.enqueue(QUEUE, "Ok", [3])

    _run(WorkerRuntime(_config(redis_url), burst=True))

    assert sorted(seen) == [1, 3]
    dead = flume.dead_list(QUEUE)
    reasons = sorted(j.error.kind for j in dead if j.error)
    assert reasons == ["DecodeError", "DecodeError", "UnknownWorker"]
    unknown = next(j for j in dead if j.error and j.error.kind == "UnknownWorker")
    assert unknown.attempt == 1  # no retries for a worker nobody registered
    assert "NobodyRegisteredThis" in unknown.error.message  # type: ignore[union-attr]


def test_batch_worker_gets_lists_and_only_failed_items_retry(redis_url: str, calls: Any) -> None:
    _, lock, register = calls
    sizes: list[int] = []
    runs: Counter[int] = Counter()

    def batch(items: list[list[Any]]) -> None:
        with lock:
            sizes.append(len(items))
            for (n,) in items:
                runs[n] += 1
        failed = [i for i, (n,) in enumerate(items) if n == 7 and runs[n] == 1]
        if failed:
            raise BatchFailed(failed, errors={failed[0]: "seven is unlucky once"})

    register("Batch", batch, batch=True)
    flume = Flume(redis_url, "t")
    flume.bulk_enqueue(QUEUE, [("Batch", [i]) for i in range(30)])
    config = _config(
        redis_url,
        max_demand=30,
        batcher={"size": 10, "timeout": 50},
        retry={"max_retries": 2, "backoff_initial": 10, "backoff_max": 20},
    )

    _run(WorkerRuntime(config), until=lambda: flume.stats([QUEUE])[QUEUE]["processed"] == 30)

    assert max(sizes) <= 10
    assert runs[7] == 2 and all(runs[n] == 1 for n in range(30) if n != 7)
    assert flume.stats([QUEUE])[QUEUE]["failed"] == 1


def test_enqueue_in_runs_later_not_before(redis_url: str, calls: Any) -> None:
    *_, register = calls
    started: list[float] = []

    async def timed() -> None:
        started.append(time.time())

    register("Timed", timed)
    flume = Flume(redis_url, "t")
    enqueued = time.time()
    flume.enqueue_in(QUEUE, 0.5, "Timed", [])
    assert flume.stats([QUEUE])[QUEUE]["scheduled"] == 1

    _run(WorkerRuntime(_config(redis_url)), until=lambda: bool(started))

    assert started and started[0] >= enqueued + 0.5 - 0.01  # Redis TIME vs this clock: same host


def test_telemetry_records_the_life_of_a_job(redis_url: str, calls: Any) -> None:
    seen, _, register = calls
    events: list[Event] = []

    async def ok(n: int) -> None:
        seen.append(n)

    register("Ok", ok)
    flume = Flume(redis_url, "t")
    flume.enqueue(QUEUE, "Ok", [1])
    runtime = WorkerRuntime(_config(redis_url), burst=True)
    runtime.telemetry.events.subscribe(events.append)

    _run(runtime)

    names = [e.name for e in events if e.name.startswith("job.") or e.name.startswith("consumer.")]
    assert names[0] == "consumer.joined"
    assert names.index("job.fetched") < names.index("job.started") < names.index("job.succeeded")
    assert names[-1] == "consumer.left"


def test_fluent_pipeline_in_code(redis_url: str, calls: Any) -> None:
    seen, _, register = calls

    async def ok(n: int) -> None:
        seen.append(n)

    register("Ok", ok)
    flume = Flume(redis_url, "t")
    flume.bulk_enqueue(QUEUE, [("Ok", [i]) for i in range(50)])

    jobs = flume.source(QUEUE, max_demand=10)
    graph = jobs.pipe(
        fo.throttle(fo.InProcessWindow(1000, 1.0)),
        fo.buffer_with_time_or_count(0.05, 5),
        flume.process(stages=2),
    )
    asyncio.run(flume.run(graph, burst=True))

    assert sorted(seen) == list(range(50))
    assert flume.stats([QUEUE])[QUEUE]["processed"] == 50


def test_batch_items_reported_throttled_wait_again_without_spending_a_retry(
    redis_url: str, calls: Any
) -> None:
    _, lock, register = calls
    runs: Counter[int] = Counter()

    def batch(items: list[list[Any]]) -> None:
        with lock:
            for (n,) in items:
                runs[n] += 1
        throttled = [i for i, (n,) in enumerate(items) if n == 4 and runs[n] == 1]
        if throttled:
            raise BatchFailed(throttled, throttled=throttled)

    register("ThrottledBatch", batch, batch=True)
    flume = Flume(redis_url, "t")
    flume.bulk_enqueue(QUEUE, [("ThrottledBatch", [i]) for i in range(10)])
    # No retries at all: an item that spent one would go to the dead letters.
    config = _config(redis_url, max_demand=10, batcher={"size": 5, "timeout": 20}, retry={"max_retries": 0})

    _run(WorkerRuntime(config), until=lambda: flume.stats([QUEUE])[QUEUE]["processed"] == 10)

    stats = flume.stats([QUEUE])[QUEUE]
    assert runs[4] == 2
    assert stats["dead"] == 0 and stats["failed"] == 0 and stats["requeued"] == 1


def test_a_configured_burst_bounds_every_grant(redis_url: str, calls: Any) -> None:
    _, _, register = calls

    async def ok(n: int) -> None:
        return None

    register("Ok", ok)
    flume = Flume(redis_url, "t")
    flume.bulk_enqueue(QUEUE, [("Ok", [i]) for i in range(200)])
    config = _config(
        redis_url,
        max_demand=50,
        processor={"stages": 20},
        rate_limiter={"allowed": 2000, "period": 1000, "burst": 5},
    )
    runtime = WorkerRuntime(config, burst=True)
    grants: list[int] = []
    runtime.telemetry.attach("throttle.granted", lambda event: grants.append(event.fields["tokens"]))

    _run(runtime)

    assert flume.stats([QUEUE])[QUEUE]["processed"] == 200
    # The stages (20) would take bigger grants; the configured burst must still cap each one.
    assert grants and max(grants) <= 5


def test_two_pipelines_on_one_queue_are_refused(redis_url: str) -> None:
    # They would share the process's in-flight list, and one that lost a fetch's reply would give back
    # jobs the other is running.
    with pytest.raises(config_module.ConfigError, match=r"'jobs' is served by pipelines\.a and pipelines\.b"):
        config_module.parse({"pipelines": {"a": {"queue": QUEUE}, "b": {"queues": [{"name": QUEUE}]}}})
    flume = Flume(redis_url, "t")
    first, second = flume.source(QUEUE), flume.source(QUEUE)
    with pytest.raises(config_module.ConfigError, match=r"two flume\.source"):
        asyncio.run(flume.run(first.pipe(flume.process()), second.pipe(flume.process()), burst=True))
    # The refused sources are gone with their connection, so the next pipeline starts clean.
    asyncio.run(flume.run(flume.source(QUEUE).pipe(flume.process()), burst=True))
    flume.close()
