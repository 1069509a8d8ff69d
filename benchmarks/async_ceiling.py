"""An async job that awaits 1 ms, against what its stages allow, measured in the same run.

    python -m benchmarks.async_ceiling [--jobs 20000] [--reps 3] [--stages 10] [--base TREE]

The ceiling: ``stages`` asyncio tasks in a bare loop (no framework, no Redis), each looping on
``await asyncio.sleep(0.001)``; its rate is what that many stages allow on this machine, the loop's timer
handling included. The same is run on the worker's own loop (``flume_rx.engine.loop``) for comparison; the
ratio quoted is against the plain asyncio one. The drain: one flume_rx worker process (``run_worker_process`` in burst mode, the CLI's
entry) with ``processor.stages = stages`` and the default demand, draining a backlog of jobs whose body is that
same await. Each runs in a fresh interpreter, interleaved, on one private Redis. The drain's rate is taken from
the first job's end to the last one's (start-up and exit left out); CPU per job is the worker process's, less
that of the same worker on an empty queue. With ``--base`` an older checkout drains too, run for run.
Reported: medians, and the drain over the ceiling. Writes ``benchmarks/results/async_ceiling.json``.
"""

from __future__ import annotations

import argparse
import json
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

from benchmarks.redis_server import private_redis
from benchmarks.saved import commit_of, save_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

CEILING = """
import asyncio, json, resource, sys, time

async def main(total, stages):
    left = total
    first = last = 0.0
    async def loop():
        nonlocal left, first, last
        while left > 0:
            left -= 1
            await asyncio.sleep(0.001)
            last = time.perf_counter()
            if not first:
                first = last
    await asyncio.gather(*(loop() for _ in range(stages)))
    return first, last

before = resource.getrusage(resource.RUSAGE_SELF)
total, stages = int(sys.argv[1]), int(sys.argv[2])
if sys.argv[3:] == ["timely"]:  # the same on the worker's loop (flume_rx.engine.loop), for comparison
    from flume_rx.engine.loop import new_event_loop
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        first, last = runner.run(main(total, stages))
else:
    first, last = asyncio.run(main(total, stages))
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
print(json.dumps({"jobs_per_s": (total - 1) / (last - first), "cpu_us_per_job": cpu / total * 1e6}))
"""

WORKERS = """
import asyncio, atexit, os, time
from flume_rx import worker

_times = []

@atexit.register
def _write():
    path = os.environ.get("BENCH_TIMES")
    if path and _times:
        with open(path, "w") as out:
            out.write(f"{len(_times)} {_times[0]!r} {_times[-1]!r}")

@worker("AwaitOne")
async def await_one():
    await asyncio.sleep(0.001)
    _times.append(time.perf_counter())

@worker("AsyncNoop")
async def async_noop():
    _times.append(time.perf_counter())
"""

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


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ceiling(jobs: int, stages: int, loop: str = "asyncio") -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CEILING, str(jobs), str(stages), loop],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def drain(tree: Path, url: str, worker: str, stages: int, jobs: int, folder: Path) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{folder}"}
    times = folder / "times.txt"
    times.unlink(missing_ok=True)
    env["BENCH_TIMES"] = str(times)
    enqueue = (
        "import sys; from flume_rx import Flume; f = Flume(sys.argv[1], 'ac'); n = int(sys.argv[3]); "
        "[f.bulk_enqueue('ac', [(sys.argv[2], [])] * min(10000, n - i)) for i in range(0, n, 10000)]; f.close()"
    )
    # Run from the scratch folder: with -c the current directory comes first on sys.path, before PYTHONPATH.
    subprocess.run([sys.executable, "-c", enqueue, url, worker, str(jobs)], env=env, cwd=folder, check=True)
    config = folder / "ac.toml"
    config.write_text(
        f'redis_url = "{url}"\nnamespace = "ac"\nimports = ["ac_workers"]\n'
        f'[pipelines.ac]\nqueue = "ac"\nprocessor = {{ stages = {stages} }}\n'
    )
    before = _cpu_children()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", RUN, str(config)], env=env, cwd=folder, check=True)
    wall = time.perf_counter() - started
    cpu = _cpu_children() - before
    processed = int(client.hget("{ac:ac}:stats", "processed") or 0)
    if processed != jobs:
        raise RuntimeError(f"{tree}: processed {processed} of {jobs} jobs")
    out: dict[str, Any] = {"wall_s": wall, "cpu_s": cpu}
    if jobs > 1:
        count, first, last = times.read_text().split()
        out["jobs_per_s"] = (int(count) - 1) / (float(last) - float(first))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--stages", type=int, default=10)
    parser.add_argument("--worker", default="AwaitOne", choices=("AwaitOne", "AsyncNoop"))
    parser.add_argument("--base", type=Path, help="an older checkout (a git worktree) to drain too")
    parser.add_argument("--out", type=Path, default=RESULTS / "async_ceiling.json")
    args = parser.parse_args()
    trees = {"after": ROOT}
    if args.base is not None:
        trees = {"before": args.base.resolve(), "after": ROOT}
    commits = {side: commit_of(tree) for side, tree in trees.items()}
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "load_average_at_start": os.getloadavg(),
        "commits": commits,
        "config": {"jobs": args.jobs, "reps": args.reps, "stages": args.stages, "worker": args.worker},
        "runs": {"ceiling": [], "ceiling_timely_loop": [], **{side: [] for side in trees}},
    }
    with tempfile.TemporaryDirectory() as tmp, private_redis() as url:
        folder = Path(tmp)
        (folder / "ac_workers.py").write_text(WORKERS)
        for _ in range(args.reps):
            report["runs"]["ceiling"].append(ceiling(args.jobs, args.stages))
            report["runs"]["ceiling_timely_loop"].append(ceiling(args.jobs, args.stages, "timely"))
            for side, tree in trees.items():  # interleaved with the ceiling, so load drift hits all alike
                idle = drain(tree, url, args.worker, args.stages, 0, folder)
                full = drain(tree, url, args.worker, args.stages, args.jobs, folder)
                full["cpu_us_per_job"] = (full["cpu_s"] - idle["cpu_s"]) / args.jobs * 1e6
                report["runs"][side].append(full)
            print(json.dumps({k: v[-1] for k, v in report["runs"].items()}), flush=True)
    medians = {
        name: {key: statistics.median(run[key] for run in runs) for key in ("jobs_per_s", "cpu_us_per_job")}
        for name, runs in report["runs"].items()
    }
    for side in trees:
        medians[side]["of_ceiling"] = medians[side]["jobs_per_s"] / medians["ceiling"]["jobs_per_s"]
    report["medians"] = medians
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(medians, indent=2))
    save_report(args.out, report)


if __name__ == "__main__":
    main()
