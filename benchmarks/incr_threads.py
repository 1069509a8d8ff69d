"""What the interpreter lock costs a sync job's Redis call: redis-py ``INCR`` from 1, 2 and 8 threads of one process.

    python -m benchmarks.incr_threads [--calls 20000] [--reps 3] [--threads 1 2 8]

No queue: each thread loops on ``INCR`` against one private Redis, sharing a client (a pool of connections),
as a sync worker's threads share theirs. Per thread count, in alternation, repetition by repetition: calls per
second, the process's CPU per call and its voluntary context switches per call (``getrusage``). A sync worker
runs its jobs on at least two threads (the event loop's and a stage thread), so the two-thread row is the
cost its job bodies start from. Writes ``benchmarks/results/incr_threads.json``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.redis_server import private_redis
from benchmarks.saved import save_report

RESULTS = Path(__file__).resolve().parent / "results"


def measure(client: redis.Redis, threads: int, calls: int) -> dict[str, float]:
    """``calls`` INCRs split over ``threads`` threads: their rate, CPU and voluntary switches per call."""

    def loop(count: int) -> None:
        for _ in range(count):
            client.incr("incr_threads:hits")

    workers = [threading.Thread(target=loop, args=(calls // threads,)) for _ in range(threads)]
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    done = calls // threads * threads
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "calls_per_s": done / wall,
        "cpu_us_per_call": cpu / done * 1e6,
        "voluntary_switches_per_call": (after.ru_nvcsw - before.ru_nvcsw) / done,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--out", type=Path, default=RESULTS / "incr_threads.json")
    args = parser.parse_args()
    runs: dict[int, list[dict[str, float]]] = {count: [] for count in args.threads}
    with private_redis() as url:
        client = redis.Redis.from_url(url)
        measure(client, 1, 1000)  # connect and warm up
        for _ in range(args.reps):
            for count in args.threads:
                runs[count].append(measure(client, count, args.calls))
        client.close()
    medians = {
        str(count): {key: statistics.median(run[key] for run in samples) for key in samples[0]}
        for count, samples in runs.items()
    }
    for count, median in medians.items():
        print(
            f"{count} thread(s): {median['calls_per_s']:,.0f} calls/s, {median['cpu_us_per_call']:.0f} µs CPU "
            f"and {median['voluntary_switches_per_call']:.2f} voluntary switches per call"
        )
    report: dict[str, Any] = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "config": {"calls": args.calls, "reps": args.reps},
        "runs": {str(count): samples for count, samples in runs.items()},
        "medians": medians,
    }
    save_report(args.out, report)


if __name__ == "__main__":
    main()
