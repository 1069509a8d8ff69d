"""Each sync pipeline runs on stage threads of its own, as many as its stages, handed its jobs ahead."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flume_rx import Flume, current_job, worker
from flume_rx.model import config as config_module
from flume_rx.model.registry import unregister
from flume_rx.surfaces.runtime import WorkerRuntime

STAGES = {"alpha": 2, "beta": 3}
JOBS = 60


@pytest.fixture
def ran() -> Iterator[list[tuple[str, str, bool]]]:
    """(queue, thread name, handed ahead) of every job run, by a sync worker per queue."""
    seen: list[tuple[str, str, bool]] = []
    lock = threading.Lock()

    def record(queue: str) -> Any:
        def job(n: int) -> None:
            current = current_job()
            assert current is not None
            delivery = current._delivery
            time.sleep(0.002)  # long enough that every thread is busy and the next job waits ahead
            with lock:
                seen.append((queue, threading.current_thread().name, delivery.queued))

        return job

    for queue in STAGES:
        worker(f"Record_{queue}")(record(queue))
    yield seen
    for queue in STAGES:
        unregister(f"Record_{queue}")


def _stage_threads(pipeline: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"flume-stage-{pipeline}_")]


def _joined(pipelines: Any) -> bool:
    deadline = time.monotonic() + 10
    for pipeline in pipelines:
        for thread in _stage_threads(pipeline):
            thread.join(max(0.0, deadline - time.monotonic()))
    return not any(_stage_threads(p) for p in pipelines)


def test_two_pipelines_in_one_process_each_get_their_own_threads_handed_ahead(
    redis_url: str, ran: list[tuple[str, str, bool]]
) -> None:
    config = config_module.parse(
        {
            "redis_url": redis_url,
            "namespace": "t",
            "pipelines": {
                name: {"queue": name, "max_demand": 20, "processor": {"stages": stages}}
                for name, stages in STAGES.items()
            },
        }
    )
    flume = Flume(redis_url, "t")
    for queue in STAGES:
        flume.bulk_enqueue(queue, [(f"Record_{queue}", [i]) for i in range(JOBS)])

    asyncio.run(WorkerRuntime(config, burst=True).run())

    for pipeline, stages in STAGES.items():
        jobs = [(name, ahead) for queue, name, ahead in ran if queue == pipeline]
        assert len(jobs) == JOBS
        names = {name for name, _ in jobs}
        # Its own threads only, never more than its stages, and never another pipeline's.
        assert all(name.startswith(f"flume-stage-{pipeline}_") for name in names)
        assert len(names) <= stages
        # Sized by its own stages, the pool lets the processor hand each sync job over ahead of a free thread.
        assert all(ahead for _, ahead in jobs)
    # The stop shuts every pipeline's threads down: none is left running.
    assert _joined(STAGES)
    flume.close()


def test_code_pipelines_each_get_their_own_threads_and_close_joins_them(
    redis_url: str, ran: list[tuple[str, str, bool]]
) -> None:
    flume = Flume(redis_url, "t")
    for queue in STAGES:
        flume.bulk_enqueue(queue, [(f"Record_{queue}", [i]) for i in range(JOBS)])
    graphs = [
        flume.source(queue, max_demand=20).pipe(flume.process(stages=stages))
        for queue, stages in STAGES.items()
    ]

    asyncio.run(flume.run(*graphs, burst=True))

    for pipeline, stages in STAGES.items():
        jobs = [(name, ahead) for queue, name, ahead in ran if queue == pipeline]
        assert len(jobs) == JOBS
        assert all(ahead for _, ahead in jobs)  # each pool is sized by its own stages: handed ahead
        assert len({name for name, _ in jobs}) <= stages
    # Two pipelines, two pools: the threads that ran one pipeline never ran the other's jobs.
    by_queue = {q: {name for queue, name, _ in ran if queue == q} for q in STAGES}
    assert not by_queue["alpha"] & by_queue["beta"]
    flume.close()
    names = {name for _, name, _ in ran}
    deadline = time.monotonic() + 10
    for thread in [t for t in threading.enumerate() if t.name in names]:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not [t for t in threading.enumerate() if t.name in names]


def test_a_drain_of_sync_jobs_leaves_nothing_per_job_to_the_garbage_collector(
    redis_url: str, collector_off: None
) -> None:
    """Each job, done or failed, is freed when it is settled: a worker that left a few objects per job in a
    cycle spent 4 to 25 ms of its loop on each young collection, one every 2,000 jobs or so."""
    done, failed = 2000, 1000
    worker("Tidy_done")(lambda n: n)

    def fail(n: int) -> None:
        raise ValueError(f"job {n} fails")

    worker("Tidy_failed")(fail)
    try:
        config = config_module.parse(
            {
                "redis_url": redis_url,
                "namespace": "tidy",
                "pipelines": {"tidy": {"queue": "tidy", "retry": {"max_retries": 0}}},
            }
        )
        flume = Flume(redis_url, "tidy")
        flume.bulk_enqueue("tidy", [("Tidy_done", [n]) for n in range(done)])
        flume.bulk_enqueue("tidy", [("Tidy_failed", [n]) for n in range(failed)])
        gc.collect()
        asyncio.run(WorkerRuntime(config, burst=True).run())
        left = gc.collect()
        stats = flume.stats(["tidy"])["tidy"]
        assert (stats["processed"], stats["dead"]) == (done, failed)
    finally:
        unregister("Tidy_done")
        unregister("Tidy_failed")
    # Starting and stopping a worker leaves the same few hundred objects (757 here) however many jobs ran;
    # the cycles this guards against left 5 per job done and 15 per job failed (11,807 for 600 and 400).
    assert left < (done + failed) // 2, f"{left} objects left to the collector"
