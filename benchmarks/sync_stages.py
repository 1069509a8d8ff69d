"""Where sync jobs run: the alternatives for the processor's sync path, measured side by side, no Redis.

    python -m benchmarks.sync_stages [--items 20000] [--stages 10] [--reps 5]

``process`` runs a sync function per item on a loop, as the worker runtime does, through:

- ``pool``: ``loop.run_in_executor`` on a ``ThreadPoolExecutor`` (one self-pipe wake-up of the loop per job);
- ``stage_threads``: :class:`flume_rx.engine.threads.StageThreads` (the threads hand outcomes back in batches,
  one wake-up for all that finished meanwhile);
- ``stage_threads_ahead``: the same threads, handed twice as many calls as there are threads, so a thread that
  finishes takes its next call from the local queue without waiting for the loop.

Each body is a no-op, 1 ms of ``time.sleep``, or one redis-py ``INCR`` to a private Redis (``--incr``). Runs
are interleaved, so a machine shared with other work slows every variant alike; the figures are medians of the
repetitions: items/s (wall) and CPU of this process per item. Writes ``benchmarks/results/sync_stages.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import reactivex
import redis

from benchmarks.saved import save_report
from flume_rx import operators as fo
from flume_rx.engine.threads import StageThreads
from flume_rx.surfaces.embedded import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(variant: str, body: Callable[[int], Any], items: int, stages: int) -> dict[str, float]:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        executor: concurrent.futures.Executor
        if variant == "pool":
            executor = concurrent.futures.ThreadPoolExecutor(stages, thread_name_prefix="bench-pool")

            def call(item: int) -> asyncio.Future[Any]:
                return loop.run_in_executor(executor, functools.partial(body, item))

        else:  # stage_threads, and stage_threads_ahead: twice as many calls handed over as threads
            threads = StageThreads(stages, "bench-stage")
            executor = threads

            def call(item: int) -> asyncio.Future[Any]:
                return threads.run_soon(body, item)

        done = loop.create_future()
        count = 0

        def seen(_outcome: object) -> None:
            nonlocal count
            count += 1

        started = time.perf_counter()
        reactivex.from_iterable(range(items)).pipe(
            fo.process(
                call, stages * 2 if variant == "stage_threads_ahead" else stages, max_demand=stages * 10
            )
        ).subscribe(seen, done.set_exception, lambda: done.set_result(None))
        await done
        elapsed = time.perf_counter() - started
        executor.shutdown(wait=True)
        if count != items:
            raise RuntimeError(f"{count} outcomes for {items} items")
        return elapsed

    cpu = _cpu_s()
    elapsed = asyncio.run(main())
    return {"items_per_s": items / elapsed, "cpu_us_per_item": (_cpu_s() - cpu) / items * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--stages", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "sync_stages.json")
    args = parser.parse_args()
    variants = ("pool", "stage_threads", "stage_threads_ahead")
    report: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(),
        },
        "config": {"items": args.items, "stages": args.stages, "reps": args.reps},
        "runs": {},
    }
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        bodies: dict[str, Callable[[int], Any]] = {
            "noop": lambda _item: None,
            "sleep1": lambda _item: time.sleep(0.001),
            "incr": lambda _item: client.incr("hits"),
        }
        for body_name, body in bodies.items():
            runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
            for _ in range(args.reps):
                for variant in variants:  # interleaved
                    runs[variant].append(run_once(variant, body, args.items, args.stages))
            report["runs"][body_name] = runs
        client.close()
    report["load_average_at_end"] = os.getloadavg()
    report["medians"] = {
        body: {
            variant: {key: statistics.median(r[key] for r in samples) for key in samples[0]}
            for variant, samples in runs.items()
        }
        for body, runs in report["runs"].items()
    }
    print(json.dumps(report["medians"], indent=2))
    save_report(args.out, report)


if __name__ == "__main__":
    main()
