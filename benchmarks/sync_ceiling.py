"""How fast sync jobs of one redis-py ``INCR`` could drain in one process, against what flume_rx drains.

    python -m benchmarks.sync_ceiling [--jobs 20000] [--reps 5] [--batch 50] [--loop-work-us 10,20,30]
        [--thread-work-us 10,20,30]

Goal (a) of issue 15 asks five times the fastest peer on this job. This measures the room there is, in one run
and alternated repetition by repetition (this machine's speed changes from minute to minute):

- ``bare-1``, ``bare-2``: one and two threads calling ``INCR`` in a loop, no queue at all;
- ``pull-1``, ``pull-2``: a queue consumer with nothing but flume_rx's own Redis side: each thread fetches
  ``--batch`` jobs with the fetch script, decodes them, runs the job, and acks the batch with one settle
  script call. No event loop, no operators, no telemetry, no retries: the least a worker on these scripts
  can spend per job;
- ``loop-2``: the same Redis side driven from an asyncio loop, as a worker built on flume_rx's async store
  would drive it: the loop fetches ``--batch`` jobs whenever it holds that many or fewer, decodes them, and
  settles each batch of outcomes with one script call; two threads take the jobs from a local queue, run
  them, and hand the outcomes back in batches, waking the loop once per batch rather than once per job;
- ``loop-2+<N>us`` (with ``--loop-work-us N,...``): ``loop-2`` with N microseconds more of the loop's own work
  per job (a busy wait after each decode): what a leaner or a heavier loop would drain, so how much of the
  loop's Python per job a worker can afford;
- ``loop-2+<N>us-threads`` (with ``--thread-work-us N,...``): the same N microseconds per job spent by the thread
  that runs the job instead (after the job): the same interpreter time, in the stage that runs in parallel
  rather than in the one that every job passes through in series;
- ``flume_rx`` at its defaults and ``huey`` (the fastest peer on this job in the every-peer runs), each one
  worker process drained exactly as the suite's ``shapes`` scenario drains it (``runner.drain_once``: the
  probe's timestamps, first job's start to last job's end, start-up left out).

Every variant drains ``--jobs`` jobs (or calls). The queue's Redis and the counter's are the suite's private
servers, flushed before each drain. Writes ``benchmarks/results/sync_ceiling.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import queue
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks.peers import PEERS
from benchmarks.redis_server import private_redis
from benchmarks.runner import Bench, Settings, drain_once
from benchmarks.saved import commit_of, save_report
from flume_rx import Flume
from flume_rx.model import codec
from flume_rx.store import Keys, RedisStore, Settlement
from flume_rx.store.commands import DEFAULT_DEAD_MAX, DEFAULT_DEAD_TTL_MS, _ops_fetch, _ops_settle
from flume_rx.store.scripts import SyncRunner

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
QUEUE = "ceiling"
NAMESPACE = "sc"


def _in_threads(threads: int, work: Callable[[int], int]) -> float:
    """Runs ``work(index)`` in ``threads`` threads at once; jobs (or calls) per second over them all."""
    done = [0] * threads

    def run(index: int) -> None:
        done[index] = work(index)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.perf_counter() - started)


def _backlog(bench: Bench, jobs: int) -> redis.Redis:
    """Empties the servers, enqueues ``jobs`` INCR jobs, and returns a client of the counter's Redis."""
    bench.reset()
    with Flume(bench.url, NAMESPACE) as flume:
        for first in range(0, jobs, 10_000):
            flume.bulk_enqueue(QUEUE, [("SyncIncr", [])] * min(10_000, jobs - first))
    return redis.Redis.from_url(bench.work_url)


def _check_every_job_ran(work_client: redis.Redis, jobs: int, variant: str) -> None:
    raw: Any = work_client.get("hits")
    work_client.close()
    if int(raw or 0) != jobs:
        raise RuntimeError(f"{variant}: {int(raw or 0)} of {jobs} jobs ran")


def bare(bench: Bench, threads: int, calls: int) -> dict[str, Any]:
    bench.reset()
    client = redis.Redis.from_url(bench.work_url)

    def work(_index: int) -> int:
        for _ in range(calls // threads):
            client.incr("hits")
        return calls // threads

    rate = _in_threads(threads, work)
    client.close()
    return {"jobs_per_s": rate}


def pull(bench: Bench, threads: int, jobs: int, batch: int) -> dict[str, Any]:
    work_client = _backlog(bench, jobs)
    queue_client = redis.Redis.from_url(bench.url)
    keys = Keys(NAMESPACE)

    def work(index: int) -> int:
        runner = SyncRunner(queue_client)
        consumer = f"ceiling:{index}"
        ran = 0
        while True:
            reply = runner.one(_ops_fetch(keys, QUEUE, consumer, batch))
            payloads = reply[2:]
            if not payloads:
                return ran
            settlements = []
            for payload in payloads:
                job = codec.decode(payload, codec.DEFAULT_MAX_PAYLOAD_BYTES)
                work_client.incr("hits")
                latency_ms = (time.time() - job.enqueued_at) * 1000 if job.enqueued_at else None
                settlements.append(Settlement(payload, "ack", latency_ms=latency_ms))
            runner.one(_ops_settle(keys, QUEUE, consumer, settlements, DEFAULT_DEAD_MAX, DEFAULT_DEAD_TTL_MS))
            ran += len(payloads)

    rate = _in_threads(threads, work)
    queue_client.close()
    _check_every_job_ran(work_client, jobs, f"pull-{threads}")
    return {"jobs_per_s": rate}


def loop_threads(
    bench: Bench, threads: int, jobs: int, batch: int, loop_work_us: float = 0.0, thread_work_us: float = 0.0
) -> dict[str, Any]:
    work_client = _backlog(bench, jobs)
    rate = asyncio.run(
        _loop_drain(bench.url, work_client, threads, jobs, batch, loop_work_us / 1e6, thread_work_us / 1e6)
    )
    _check_every_job_ran(work_client, jobs, f"loop-{threads}")
    return {"jobs_per_s": rate}


async def _loop_drain(
    url: str,
    work_client: redis.Redis,
    threads: int,
    jobs: int,
    batch: int,
    loop_work_s: float,
    thread_work_s: float,
) -> float:
    loop = asyncio.get_running_loop()
    store = RedisStore.from_url(url, NAMESPACE)
    consumer = "ceiling:loop"
    calls: queue.SimpleQueue[tuple[bytes, float] | None] = queue.SimpleQueue()
    finished: list[tuple[bytes, float | None]] = []  # appended by the threads, taken by the loop
    lock = threading.Lock()
    woken = asyncio.Event()
    waking = False

    def wake() -> None:
        nonlocal waking
        waking = False
        woken.set()

    def run_jobs() -> None:
        nonlocal waking
        while True:
            call = calls.get()
            if call is None:
                return
            payload, enqueued_at = call
            work_client.incr("hits")
            if thread_work_s:
                _busy(thread_work_s)
            latency_ms = (time.time() - enqueued_at) * 1000 if enqueued_at else None
            with lock:
                finished.append((payload, latency_ms))
                # One wake-up per batch, or when the threads are about to run dry.
                tell = not waking and (len(finished) >= batch or calls.empty())
                if tell:
                    waking = True
            if tell:
                loop.call_soon_threadsafe(wake)

    workers = [threading.Thread(target=run_jobs) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    held = settled = 0
    exhausted = False
    while settled < jobs:
        if not exhausted and held <= batch:
            payloads = await store.fetch(QUEUE, consumer, batch, 0.0)
            exhausted = not payloads
            for payload in payloads:  # decoded on the loop, as a worker's source decodes
                calls.put((payload, codec.decode(payload, codec.DEFAULT_MAX_PAYLOAD_BYTES).enqueued_at))
                if loop_work_s:
                    _busy(loop_work_s)
            held += len(payloads)
        await woken.wait()
        woken.clear()
        with lock:
            done = finished[:]
            finished.clear()
        if done:
            await store.settle(
                QUEUE, consumer, [Settlement(p, "ack", latency_ms=latency) for p, latency in done]
            )
            held -= len(done)
            settled += len(done)
    elapsed = time.perf_counter() - started
    for _ in workers:
        calls.put(None)
    for worker in workers:
        worker.join()
    await store.aclose()
    return jobs / elapsed


def _busy(seconds: float) -> None:
    """Keeps the interpreter busy for ``seconds``, as the loop's own Python per job does (no sleep: it holds
    the interpreter lock the job threads also need)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _microseconds(text: str) -> list[float]:
    """``--loop-work-us`` and ``--thread-work-us``: comma-separated microseconds, one variant each."""
    return [float(us) for us in text.split(",") if us.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50, help="jobs per fetch of the pull and loop consumers")
    parser.add_argument(
        "--loop-work-us",
        type=_microseconds,
        default=[],
        help="comma-separated microseconds of extra loop work per job, each a loop-2 variant (e.g. 10,20,30)",
    )
    parser.add_argument(
        "--thread-work-us",
        type=_microseconds,
        default=[],
        help="comma-separated microseconds of extra work per job in the job's thread, each a loop-2 variant",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "sync_ceiling.json")
    args = parser.parse_args()
    loop_work_us: list[float] = args.loop_work_us
    thread_work_us: list[float] = args.thread_work_us
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "commit": commit_of(ROOT),
        "config": {
            "jobs": args.jobs,
            "reps": args.reps,
            "batch": args.batch,
            "body": "one redis-py INCR",
            "loop_work_us": loop_work_us,
            "thread_work_us": thread_work_us,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_at_start": os.getloadavg(),
        "runs": {},
    }
    peers = {spec.name: spec for spec in PEERS}
    incr = {"BENCH_SHAPE": "incr"}
    with private_redis() as url, private_redis() as probe_url, private_redis() as work_url:
        bench = Bench(url, probe_url, Settings.for_mode(quick=False), lambda _line: None, work_url)
        variants: dict[str, Callable[[], dict[str, Any]]] = {
            "bare-1": lambda: bare(bench, 1, args.jobs),
            "bare-2": lambda: bare(bench, 2, args.jobs),
            "pull-1": lambda: pull(bench, 1, args.jobs, args.batch),
            "pull-2": lambda: pull(bench, 2, args.jobs, args.batch),
            "loop-2": lambda: loop_threads(bench, 2, args.jobs, args.batch),
            **{
                f"loop-2+{us:g}us": functools.partial(loop_threads, bench, 2, args.jobs, args.batch, us)
                for us in loop_work_us
            },
            **{
                f"loop-2+{us:g}us-threads": functools.partial(
                    loop_threads, bench, 2, args.jobs, args.batch, thread_work_us=us
                )
                for us in thread_work_us
            },
            "flume_rx": lambda: drain_once(
                bench, peers["flume_rx"], args.jobs, 1, variant="defaults:sync", env=incr
            ),
            "huey": lambda: drain_once(bench, peers["huey"], args.jobs, 1, env=incr),
        }
        for _ in range(args.reps):
            for name, run in variants.items():  # alternated
                result = run()
                report["runs"].setdefault(name, []).append(result)
                print(name, f"{result['jobs_per_s']:,.0f}/s", flush=True)
    report["load_average_at_end"] = os.getloadavg()
    report["medians"] = {
        name: statistics.median(run["jobs_per_s"] for run in runs) for name, runs in report["runs"].items()
    }
    print(json.dumps(report["medians"], indent=2))
    save_report(args.out, report)


if __name__ == "__main__":
    main()
