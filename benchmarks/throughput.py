"""No-op throughput of one worker process: bulk enqueue a backlog, then drain it in burst mode.

    python -m benchmarks.throughput [--jobs 100000] [--reps 3] [--max-demand 500] [--stages 200]

Reports enqueue jobs/s, drain jobs/s, the worker's CPU per job and its peak RSS (medians of the repetitions),
with and without a telemetry subscriber, and writes benchmarks/results/throughput.json. The worker runs in this process, on a
private Redis; the suite in benchmarks/runner.py measures the same thing from outside against the peers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.saved import save_report
from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.surfaces.embedded import RedisServer
from flume_rx.surfaces.runtime import WorkerRuntime

RESULTS = Path(__file__).resolve().parent / "results"
QUEUE = "bench"


@worker("BenchNoop")
async def noop(_n: int) -> None:
    return None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(url: str, jobs: int, max_demand: int, stages: int, listen: bool) -> dict[str, Any]:
    redis.Redis.from_url(url).flushall()
    flume = Flume(url, "bench")
    chunk = 10_000
    started = time.perf_counter()
    for first in range(0, jobs, chunk):
        flume.bulk_enqueue(QUEUE, [("BenchNoop", [i]) for i in range(first, min(jobs, first + chunk))])
    enqueue_s = time.perf_counter() - started
    config = config_module.parse(
        {
            "redis_url": url,
            "namespace": "bench",
            "pipelines": {
                "bench": {"queue": QUEUE, "max_demand": max_demand, "processor": {"stages": stages}}
            },
        }
    )
    runtime = WorkerRuntime(config, burst=True)
    seen = 0

    def count(_event: object) -> None:
        nonlocal seen
        seen += 1

    if listen:
        runtime.telemetry.events.subscribe(count)
    gc.collect()
    cpu_before = _cpu_s()
    started = time.perf_counter()
    asyncio.run(runtime.run())
    drain_s = time.perf_counter() - started
    # CPU of this process (every thread; the Redis server is another process): steadier than the wall clock
    # on a shared machine.
    cpu_s = _cpu_s() - cpu_before
    processed = flume.stats([QUEUE])[QUEUE]["processed"]
    flume.close()
    if processed != jobs:
        raise RuntimeError(f"drained {processed} of {jobs} jobs")
    return {
        "enqueue_jobs_per_s": jobs / enqueue_s,
        "drain_jobs_per_s": jobs / drain_s,
        "drain_s": drain_s,
        "worker_cpu_us_per_job": cpu_s / jobs * 1e6,
        "events_seen": seen,
        "peak_rss_mb": _peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-demand", type=int, default=500)
    parser.add_argument("--stages", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(),
        },
        "config": {"jobs": args.jobs, "max_demand": args.max_demand, "stages": args.stages},
        "runs": {"no_listener": [], "observable_subscriber": []},
    }
    with RedisServer() as server:
        for _ in range(args.reps):
            # Interleaved, so drift in the machine's load hits both variants alike.
            for name, listen in (("no_listener", False), ("observable_subscriber", True)):
                report["runs"][name].append(
                    run_once(server.url, args.jobs, args.max_demand, args.stages, listen)
                )
    report["medians"] = {
        name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for name, runs in report["runs"].items()
    }
    print(json.dumps(report["medians"], indent=2))
    save_report(args.out, report)


if __name__ == "__main__":
    main()
