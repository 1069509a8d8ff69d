"""What telemetry costs: drain throughput of no-op jobs with nobody listening, a plain handler, an Observable
subscriber and the Prometheus exporter; plus the cost of one ``emit`` with and without listeners.

Each mode drains ``--jobs`` jobs in one burst worker on a private redis-server, ``--runs`` times (modes
interleaved, so drift in the machine hits them all alike); the result is the median jobs/s per mode.

    PYTHONPATH=. .venv/bin/python benchmarks/telemetry_cost.py [--jobs 20000] [--runs 3]

Writes benchmarks/results/telemetry_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.model.telemetry import Event, Telemetry
from flume_rx.surfaces.embedded import RedisServer
from flume_rx.surfaces.runtime import WorkerRuntime

RESULTS = Path(__file__).resolve().parent / "results" / "telemetry_cost.json"
QUEUE = "bench"


@worker("TelemetryCostNoop")
async def noop(n: int) -> None:
    return None


def _ignore(event: Event) -> None:
    return None


def _listen(mode: str, telemetry: Telemetry) -> Callable[[], None]:
    """Attach the listener of ``mode``; returns what detaches it."""
    if mode == "none":
        return lambda: None
    if mode == "handler":
        return telemetry.attach("*", _ignore)
    if mode == "observable":
        subscription = telemetry.events.subscribe(_ignore)
        return subscription.dispose
    if mode == "prometheus":
        from flume_rx.surfaces.metrics import PrometheusMetrics

        return PrometheusMetrics(telemetry).close
    raise ValueError(f"unknown mode {mode!r}")


def drain(url: str, mode: str, jobs: int, run: int) -> float:
    """Jobs per second for one burst drain of ``jobs`` no-op jobs with the listener of ``mode``."""
    namespace = f"tc{run}{mode}"
    flume = Flume(url, namespace)
    for start in range(0, jobs, 5000):
        flume.bulk_enqueue(QUEUE, [("TelemetryCostNoop", [i]) for i in range(start, min(jobs, start + 5000))])
    flume.close()
    config = config_module.parse(
        {
            "redis_url": url,
            "namespace": namespace,
            "pipelines": {"main": {"queue": QUEUE, "max_demand": 500, "processor": {"stages": 100}}},
        }
    )
    telemetry = Telemetry()
    detach = _listen(mode, telemetry)
    started = time.perf_counter()
    asyncio.run(WorkerRuntime(config, telemetry=telemetry, burst=True).run())
    elapsed = time.perf_counter() - started
    detach()
    return jobs / elapsed


def emit_cost_ns(listening: bool) -> float:
    """Nanoseconds per ``emit`` of a job.succeeded-sized event."""
    telemetry = Telemetry()
    if listening:
        telemetry.attach("*", _ignore)
    number = 200_000

    def emit() -> None:
        telemetry.emit("job.succeeded", queue="q", worker="w", job_id="j", attempt=0, duration_ms=1.0)

    best = min(timeit.repeat(emit, number=number, repeat=5))
    return best / number * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.runs < 3:
        parser.error(f"--runs must be at least 3 for a median worth reporting (got {args.runs})")
    modes = ["none", "handler", "observable", "prometheus"]
    samples: dict[str, list[float]] = {m: [] for m in modes}
    with RedisServer() as server:
        drain(server.url, "none", min(2000, args.jobs), -1)  # warm-up: imports, script loading
        for run in range(args.runs):
            for mode in modes:
                samples[mode].append(drain(server.url, mode, args.jobs, run))
                print(f"run {run + 1}/{args.runs} {mode:>10}: {samples[mode][-1]:,.0f} jobs/s", flush=True)
    medians = {m: statistics.median(v) for m, v in samples.items()}
    result: dict[str, Any] = {
        "benchmark": "telemetry_cost",
        "jobs_per_run": args.jobs,
        "runs": args.runs,
        "jobs_per_s": {m: {"median": medians[m], "runs": samples[m]} for m in modes},
        "cost_vs_none_pct": {m: 100 * (1 - medians[m] / medians["none"]) for m in modes if m != "none"},
        "emit_ns": {"nobody_listening": emit_cost_ns(False), "one_handler": emit_cost_ns(True)},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "one worker process, no-op async jobs, burst drain; median of the runs; noisy shared machine",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({"median_jobs_per_s": medians, "cost_vs_none_pct": result["cost_vs_none_pct"]}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
