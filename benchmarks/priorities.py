"""Fairness between the queues of one multi-queue pipeline under load, and Redis calls per job.

``python -m benchmarks.priorities [--jobs N] [--out PATH]`` starts a private redis-server, fills two queues of
one group (``bench/urgent`` and ``bench/bulk``) with N no-op jobs each, drains them with one worker process
per scenario (weights 10:1, 3:1, 1:1 and strict) and writes JSON to ``benchmarks/results/priorities.json``:
per scenario, the jobs per second, each queue's share of the starts while both were backlogged against its
weight's share, the longest run of starts without a bulk job (starvation shows here), and Redis commands and
round trips (EVALSHA calls) per job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from flume_rx import Flume, worker
from flume_rx import config as config_module
from flume_rx.embedded import RedisServer
from flume_rx.runtime import WorkerRuntime

URGENT, BULK = "bench/urgent", "bench/bulk"
RESULTS = Path(__file__).resolve().parent / "results" / "priorities.json"

_starts: list[str] = []
_lock = threading.Lock()


@worker("BenchPriorityJob")
async def _job(kind: str) -> None:
    with _lock:
        _starts.append(kind)


def _scenario(url: str, name: str, jobs: int, weights: tuple[int, int], order: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    client.flushall()
    with Flume(url, "bench") as flume:
        for start in range(0, jobs, 5000):
            count = min(5000, jobs - start)
            flume.bulk_enqueue(URGENT, [("BenchPriorityJob", ["urgent"])] * count)
            flume.bulk_enqueue(BULK, [("BenchPriorityJob", ["bulk"])] * count)
    config = config_module.parse(
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
    _starts.clear()
    client.config_resetstat()
    began = time.perf_counter()
    asyncio.run(WorkerRuntime(config, burst=True).run())
    elapsed = time.perf_counter() - began
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    commands = sum(int(v["calls"]) for v in stats.values())
    round_trips = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    # While both queues had jobs: up to the start at which one of them ran out.
    both = 0
    seen = {"urgent": 0, "bulk": 0}
    for kind in _starts:
        seen[kind] += 1
        both += 1
        if seen["urgent"] == jobs or seen["bulk"] == jobs:
            break
    window = _starts[:both]
    longest_without_bulk = run = 0
    for kind in window:
        run = 0 if kind == "bulk" else run + 1
        longest_without_bulk = max(longest_without_bulk, run)
    total = 2 * jobs
    return {
        "scenario": name,
        "order": order,
        "weights": {"urgent": weights[0], "bulk": weights[1]},
        "jobs": total,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(total / elapsed, 1),
        "both_backlogged_starts": both,
        "bulk_share": round(window.count("bulk") / max(1, both), 4),
        "bulk_share_expected": 0.0 if order == "strict" else round(weights[1] / sum(weights), 4),
        "longest_run_without_bulk": longest_without_bulk,
        "redis_commands_per_job": round(commands / total, 3),
        "round_trips_per_job": round(round_trips / total, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per queue (default 20000)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = []
    with RedisServer() as server:
        for name, weights, order in (
            ("weighted 10:1", (10, 1), "weighted"),
            ("weighted 3:1", (3, 1), "weighted"),
            ("weighted 1:1", (1, 1), "weighted"),
            ("strict", (1, 1), "strict"),
        ):
            result = _scenario(server.url, name, args.jobs, weights, order)
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "priorities", "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
