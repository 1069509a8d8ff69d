"""Fairness between the queues of one multi-queue pipeline under load, and Redis calls per job.

``python -m benchmarks.priorities [--quick] [--jobs N] [--reps R] [--out PATH]`` starts a private redis-server,
fills two queues of one group (``bench/urgent`` and ``bench/bulk``) with N no-op jobs each and drains them with
a worker runtime in burst mode inside this process, once per scenario (weights 10:1, 3:1, 1:1 and strict
order), R times over. It writes JSON to ``benchmarks/results/priorities.json``: per scenario, the median over
the repetitions of the jobs per second, the bulk queue's share of the starts while both queues were
backlogged against its weight's share, the longest run of starts without a bulk job (starvation shows here),
the position of the first bulk start, and Redis commands and round trips (EVALSHA calls) per job; every
repetition's raw figures are kept under ``samples``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks import stats
from benchmarks.runner import machine_info
from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.surfaces.embedded import RedisServer
from flume_rx.surfaces.runtime import WorkerRuntime

URGENT, BULK = "bench/urgent", "bench/bulk"
RESULTS = Path(__file__).resolve().parent / "results" / "priorities.json"
SCENARIOS: tuple[tuple[str, tuple[int, int], str], ...] = (
    ("weighted 10:1", (10, 1), "weighted"),
    ("weighted 3:1", (3, 1), "weighted"),
    ("weighted 1:1", (1, 1), "weighted"),
    ("strict", (1, 1), "strict"),
)
FULL_JOBS, FULL_REPS = 20_000, 3
QUICK_JOBS, QUICK_REPS = 2_000, 1
# The figures that vary from run to run; the README quotes their medians.
MEASURED = (
    "seconds",
    "jobs_per_s",
    "both_backlogged_starts",
    "bulk_share",
    "longest_run_without_bulk",
    "first_bulk_start",
    "redis_commands_per_job",
    "round_trips_per_job",
)

_starts: list[str] = []
_lock = threading.Lock()


@worker("BenchPriorityJob")
async def _job(kind: str) -> None:
    with _lock:
        _starts.append(kind)


def _config(url: str, weights: tuple[int, int], order: str) -> config_module.FlumeConfig:
    return config_module.parse(
        {
            "redis_url": url,
            "namespace": "bench",
            "pipelines": {
                "bench": {
                    "queues": [{"name": URGENT, "weight": weights[0]}, {"name": BULK, "weight": weights[1]}],
                    "order": order,
                    "max_demand": 200,
                    "processor": {"stages": 50},
                }
            },
        }
    )


def fairness(starts: list[str], jobs: int) -> dict[str, int | float]:
    """Shares and starvation over the starts made while both queues still had jobs.

    That stretch ends at the start that empties one queue (``jobs`` starts of one kind); after it, the other
    queue runs alone and says nothing about fairness.
    """
    both = 0
    seen = {"urgent": 0, "bulk": 0}
    for kind in starts:
        seen[kind] += 1
        both += 1
        if seen["urgent"] == jobs or seen["bulk"] == jobs:
            break
    window = starts[:both]
    longest_without_bulk = run = 0
    for kind in window:
        run = 0 if kind == "bulk" else run + 1
        longest_without_bulk = max(longest_without_bulk, run)
    return {
        "both_backlogged_starts": both,
        "bulk_share": round(window.count("bulk") / max(1, both), 4),
        "longest_run_without_bulk": longest_without_bulk,
        # Strict order shows as this equal to the urgent backlog: no bulk job started before the last urgent.
        "first_bulk_start": starts.index("bulk") if "bulk" in starts else len(starts),
    }


def _measure(url: str, jobs: int, weights: tuple[int, int], order: str) -> dict[str, Any]:
    """One drain of ``jobs`` urgent and ``jobs`` bulk jobs; wall time includes the runtime's start-up."""
    client = redis.Redis.from_url(url)
    client.flushall()
    with Flume(url, "bench") as flume:
        for start in range(0, jobs, 5000):
            count = min(5000, jobs - start)
            flume.bulk_enqueue(URGENT, [("BenchPriorityJob", ["urgent"])] * count)
            flume.bulk_enqueue(BULK, [("BenchPriorityJob", ["bulk"])] * count)
    config = _config(url, weights, order)
    _starts.clear()
    client.config_resetstat()
    began = time.perf_counter()
    asyncio.run(WorkerRuntime(config, burst=True).run())
    elapsed = time.perf_counter() - began
    commandstats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    commands = sum(int(v["calls"]) for v in commandstats.values())
    round_trips = int(commandstats.get("cmdstat_evalsha", {}).get("calls", 0))
    total = 2 * jobs
    return {
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(total / elapsed, 1),
        **fairness(list(_starts), jobs),
        "redis_commands_per_job": round(commands / total, 3),
        "round_trips_per_job": round(round_trips / total, 4),
    }


def summarize(
    name: str, weights: tuple[int, int], order: str, jobs: int, samples: list[dict[str, Any]]
) -> dict[str, Any]:
    """One scenario's entry: the medians of ``MEASURED`` under their per-run names, and the raw samples."""
    medians = {key: stats.median([s[key] for s in samples]) for key in MEASURED}
    return {
        "scenario": name,
        "order": order,
        "weights": {"urgent": weights[0], "bulk": weights[1]},
        "jobs": 2 * jobs,
        **medians,
        "bulk_share_expected": 0.0 if order == "strict" else round(weights[1] / sum(weights), 4),
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_JOBS} jobs per queue, {QUICK_REPS} repetition"
    )
    parser.add_argument(
        "--jobs", type=int, help=f"jobs per queue (default {FULL_JOBS}; --quick {QUICK_JOBS})"
    )
    parser.add_argument("--reps", type=int, help=f"repetitions of every scenario (default {FULL_REPS})")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON to write (default %(default)s)")
    args = parser.parse_args(argv)
    jobs = args.jobs or (QUICK_JOBS if args.quick else FULL_JOBS)
    reps = args.reps or (QUICK_REPS if args.quick else FULL_REPS)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in SCENARIOS}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # The machine is shared: the load around the run says how far its jobs/s can be trusted.
    load_before = os.getloadavg()
    with RedisServer() as server:
        machine = machine_info(server.url)
        # Repetitions on the outside: a machine that slows down part way through slows every scenario alike.
        for rep in range(reps):
            for name, weights, order in SCENARIOS:
                sample = _measure(server.url, jobs, weights, order)
                samples[name].append(sample)
                print(json.dumps({"rep": rep + 1, "scenario": name, **sample}), file=sys.stderr)
    report = {
        "benchmark": "priorities",
        "started": started,
        "machine": machine,
        "load_average_1_5_15m": {"before": load_before, "after": os.getloadavg()},
        "jobs_per_queue": jobs,
        "reps": reps,
        "results": [summarize(name, w, order, jobs, samples[name]) for name, w, order in SCENARIOS],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
