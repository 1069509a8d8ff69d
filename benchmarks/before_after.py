"""flume_rx against an older checkout of itself, run for run, in the shapes users run.

    git worktree add ../flume-base 99ef37e
    python -m benchmarks.before_after --base ../flume-base [--jobs 20000] [--reps 3]

For each case (a worker shape and a config) both trees drain the same backlog with one worker process
(``run_worker_process`` in burst mode, the CLI's entry), interleaved, on one private Redis; the ``incr`` jobs
talk to a second one. Reported per tree, medians of the repetitions: jobs/s (wall time of the worker process,
less that of the same worker on an empty queue, so start-up and exit are left out), the worker's CPU per job
(the same way), and,
from a pass of its own under MONITOR, the client commands per job apart from the scripts' own. Writes
``benchmarks/results/before_after.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.commands import MonitorCounter
from benchmarks.redis_server import private_redis
from benchmarks.saved import commit_of, save_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

WORKERS = """
import asyncio, os, time
import redis
from flume_rx import worker

_work = None

def _client():
    global _work
    if _work is None:
        _work = redis.Redis.from_url(os.environ["BENCH_WORK_URL"])
    return _work

@worker("SyncNoop")
def sync_noop():
    return None

@worker("SyncIncr")
def sync_incr():
    _client().incr("hits")

@worker("SyncSleep1")
def sync_sleep():
    time.sleep(0.001)

@worker("AsyncAwait1")
async def async_await():
    await asyncio.sleep(0.001)

@worker("AsyncNoop")
async def async_noop():
    return None
"""

CASES: dict[str, tuple[str, dict[str, int]]] = {
    # name: (worker, pipeline settings); {} is flume_rx's defaults (max_demand 100, stages 10)
    "noop_async_suite_shape": ("AsyncNoop", {"max_demand": 500, "stages": 200}),
    "noop_async_defaults": ("AsyncNoop", {}),
    "noop_async_seed": ("AsyncNoop", {"stages": 5}),
    "noop_sync_defaults": ("SyncNoop", {}),
    "noop_sync_seed": ("SyncNoop", {"stages": 5}),
    "incr_sync_defaults": ("SyncIncr", {}),
    "incr_sync_seed": ("SyncIncr", {"stages": 5}),
    "sleep1_sync_defaults": ("SyncSleep1", {}),
    "await1_async_stages10": ("AsyncAwait1", {"stages": 10}),
}

RUN = """
import sys
try:
    from flume_rx.model.config import load
    from flume_rx.surfaces.processes import run_worker_process
except ImportError:  # a checkout from before the layers had folders of their own
    from flume_rx.config import load
    from flume_rx.runtime import run_worker_process
sys.exit(run_worker_process(load(sys.argv[1]), burst=True))
"""


def _config(url: str, settings: dict[str, int], folder: Path) -> Path:
    lines = [
        f'redis_url = "{url}"',
        'namespace = "ba"',
        'imports = ["ba_workers"]',
        "[pipelines.ba]",
        'queue = "ba"',
    ]
    if "max_demand" in settings:
        lines.append(f"max_demand = {settings['max_demand']}")
    if "stages" in settings:
        lines.append(f"processor = {{ stages = {settings['stages']} }}")
    path = folder / f"ba-{len(list(folder.iterdir()))}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def drain(tree: Path, url: str, work_url: str, worker: str, settings: dict[str, int], jobs: int, folder: Path,
          count: bool = False) -> dict[str, Any]:  # fmt: skip
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.config_resetstat()
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{folder}", "BENCH_WORK_URL": work_url}
    enqueue = (
        "import sys; from flume_rx import Flume; f = Flume(sys.argv[1], 'ba'); n = int(sys.argv[3]); "
        "[f.bulk_enqueue('ba', [(sys.argv[2], [])] * min(10000, n - i)) for i in range(0, n, 10000)]; f.close()"
    )
    # Run from the scratch folder: with -c the current directory comes first on sys.path, before PYTHONPATH.
    subprocess.run([sys.executable, "-c", enqueue, url, worker, str(jobs)], env=env, cwd=folder, check=True)
    config = _config(url, settings, folder)
    counter = MonitorCounter(url) if count else None
    if counter is not None:
        counter.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", RUN, str(config)], env=env, cwd=folder, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    processed = int(client.hget("{ba:ba}:stats", "processed") or 0)
    if processed != jobs:
        raise RuntimeError(f"{tree}: processed {processed} of {jobs} jobs")
    out: dict[str, Any] = {
        "flume_rx": subprocess.run(
            [sys.executable, "-c", "import flume_rx; print(flume_rx.__file__)"],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "wall_s": wall,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }
    if counter is not None:
        out = counter.stop().as_dict(jobs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, required=True, help="the older checkout (a git worktree)")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--count-jobs", type=int, default=5_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", action="append", default=[], help="run only this case (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS / "before_after.json")
    args = parser.parse_args()
    trees = {"before": args.base.resolve(), "after": ROOT}
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "load_average_at_start": os.getloadavg(),
        "commits": {side: commit_of(tree) for side, tree in trees.items()},
        "config": {"jobs": args.jobs, "count_jobs": args.count_jobs, "reps": args.reps},
        "cases": {},
    }
    cases = {k: v for k, v in CASES.items() if not args.only or k in args.only}
    with tempfile.TemporaryDirectory() as tmp, private_redis() as url, private_redis() as work_url:
        folder = Path(tmp)
        (folder / "ba_workers.py").write_text(WORKERS)
        for name, (worker, settings) in cases.items():
            runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for _ in range(args.reps):
                for side, tree in trees.items():  # interleaved
                    # The same worker on an empty queue: its start-up and exit, taken off the drain's figures.
                    idle = drain(tree, url, work_url, worker, settings, 0, folder)
                    full = drain(tree, url, work_url, worker, settings, args.jobs, folder)
                    wall = full["wall_s"] - idle["wall_s"]
                    cpu = full["cpu_s"] - idle["cpu_s"]
                    runs[side].append(
                        {
                            **full,
                            "idle_wall_s": idle["wall_s"],
                            "idle_cpu_s": idle["cpu_s"],
                            "jobs_per_s": args.jobs / wall if wall > 0 else None,
                            "worker_cpu_us_per_job": cpu / args.jobs * 1e6,
                        }
                    )
            counted = {
                side: drain(tree, url, work_url, worker, settings, args.count_jobs, folder, count=True)
                for side, tree in trees.items()
            }
            entry: dict[str, Any] = {"worker": worker, "settings": settings or "defaults", "runs": runs}
            for side in trees:
                entry[side] = {
                    "median_jobs_per_s": statistics.median(r["jobs_per_s"] or 0.0 for r in runs[side]),
                    "median_worker_cpu_us_per_job": statistics.median(
                        r["worker_cpu_us_per_job"] for r in runs[side]
                    ),
                    **counted[side],
                }
            report["cases"][name] = entry
            print(
                f"{name}: "
                + ", ".join(
                    f"{side} {entry[side]['median_jobs_per_s']:,.0f} jobs/s "
                    f"{entry[side]['median_worker_cpu_us_per_job']:.0f} us CPU "
                    f"{entry[side]['client_commands_per_job']:.3f} client cmds/job"
                    for side in trees
                ),
                flush=True,
            )
    report["load_average_at_end"] = os.getloadavg()
    save_report(args.out, report)


if __name__ == "__main__":
    main()
