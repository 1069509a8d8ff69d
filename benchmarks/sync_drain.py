"""One worker process draining sync jobs, as ``flume-rx worker`` runs them: trees and switch intervals alternated.

    python -m benchmarks.sync_drain [--body incr] [--jobs 10000] [--reps 5] [--stages N]
        [--base <worktree of an older commit>] [--switch-interval 0.0005 ...] [--pin 0]

Each variant (this tree and ``--base`` if given; each with the interpreter's default switch interval and
with every ``--switch-interval``; each also with the worker process kept on the processors ``--pin`` names)
drains the same backlog of jobs with one worker process (``run_worker_process`` in burst mode) on a private
Redis; the ``incr`` body makes one redis-py ``INCR`` to a
second private Redis. Variants alternate, repetition by repetition, so a machine whose load drifts slows them
alike. Per run, from inside the worker process: jobs/s from the first job's end to the last's (start-up and
exit left out), the process's CPU per job and its voluntary and involuntary context switches per job
(``getrusage``, start-up included), and the load average. Writes ``benchmarks/results/sync_drain.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.redis_server import private_redis
from benchmarks.saved import commit_of, save_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

WORKERS = """
import atexit, json, os, resource, sys, time
import redis
from flume_rx import worker

_work = None
_ends = []

@worker("SyncIncr")
def sync_incr():
    global _work
    if _work is None:
        _work = redis.Redis.from_url(os.environ["BENCH_WORK_URL"])
    _work.incr("hits")
    _ends.append(time.perf_counter())

@worker("SyncNoop")
def sync_noop():
    _ends.append(time.perf_counter())

@worker("SyncSleep1")
def sync_sleep():
    time.sleep(0.001)
    _ends.append(time.perf_counter())

def _report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    n = len(_ends)
    if n > 1:
        ends = sorted(_ends)
        sys.stderr.write("DRAIN " + json.dumps({
            "jobs": n,
            "jobs_per_s": (n - 1) / (ends[-1] - ends[0]),
            "cpu_us_per_job": (usage.ru_utime + usage.ru_stime) / n * 1e6,
            "voluntary_switches_per_job": usage.ru_nvcsw / n,
            "involuntary_switches_per_job": usage.ru_nivcsw / n,
        }) + "\\n")

atexit.register(_report)
"""

RUN = """
import os, sys
if sys.argv[2]:
    sys.setswitchinterval(float(sys.argv[2]))
if sys.argv[3]:
    os.sched_setaffinity(0, {int(cpu) for cpu in sys.argv[3].split(",")})
from flume_rx.model.config import load
from flume_rx.surfaces.processes import run_worker_process
sys.exit(run_worker_process(load(sys.argv[1]), burst=True))
"""

BODIES = {"incr": "SyncIncr", "noop": "SyncNoop", "sleep1": "SyncSleep1"}


def drain(
    tree: Path, switch: str, pin: str, worker: str, jobs: int, stages: int | None, folder: Path
) -> dict[str, Any]:
    with private_redis() as url, private_redis() as work_url:
        lines = [
            f'redis_url = "{url}"',
            'namespace = "sd"',
            'imports = ["sd_workers"]',
            "[pipelines.sd]",
            'queue = "sd"',
        ]
        if stages is not None:
            lines.append(f"processor = {{ stages = {stages} }}")
        config = folder / "sd.toml"
        config.write_text("\n".join(lines) + "\n")
        env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{folder}", "BENCH_WORK_URL": work_url}
        enqueue = (
            "import sys; from flume_rx import Flume; f = Flume(sys.argv[1], 'sd'); n = int(sys.argv[3]); "
            "[f.bulk_enqueue('sd', [(sys.argv[2], [])] * min(10000, n - i)) for i in range(0, n, 10000)]; "
            "f.close()"
        )
        # Run from the scratch folder: with -c the current directory comes first on sys.path.
        subprocess.run(
            [sys.executable, "-c", enqueue, url, worker, str(jobs)], env=env, cwd=folder, check=True
        )
        done = subprocess.run(
            [sys.executable, "-c", RUN, str(config), switch, pin],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        )
    reports = [line[6:] for line in done.stderr.splitlines() if line.startswith("DRAIN ")]
    if not reports:
        raise RuntimeError(f"{tree}: no drain report; stderr ends {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(reports[-1])
    if result["jobs"] != jobs:
        raise RuntimeError(f"{tree}: {result['jobs']} of {jobs} jobs ran")
    result["load_average"] = os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--body", choices=sorted(BODIES), default="incr")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--stages", type=int, help="processor stages (default: flume_rx's own)")
    parser.add_argument("--base", type=Path, help="an older checkout (a git worktree) to alternate with")
    parser.add_argument(
        "--switch-interval", action="append", default=[], help="also run with this sys.setswitchinterval"
    )
    parser.add_argument(
        "--pin", help="also run with the worker process on these processors only (e.g. 0, or 0,1)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "sync_drain.json")
    args = parser.parse_args()
    trees = {"this": ROOT} if args.base is None else {"base": args.base.resolve(), "this": ROOT}
    variants = {
        f"{name}{f' switch={switch}' if switch else ''}{f' pin={pin}' if pin else ''}": (tree, switch, pin)
        for name, tree in trees.items()
        for switch in ["", *args.switch_interval]
        for pin in ["", *([args.pin] if args.pin else [])]
    }
    commits = {name: commit_of(tree) for name, tree in trees.items()}
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "commits": commits,
        "config": {
            "body": args.body,
            "jobs": args.jobs,
            "reps": args.reps,
            "stages": args.stages or "default",
        },
        "load_average_at_start": os.getloadavg(),
        "runs": {name: [] for name in variants},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sd_workers.py").write_text(WORKERS)
        for _ in range(args.reps):
            for name, (tree, switch, pin) in variants.items():  # alternated
                result = drain(tree, switch, pin, BODIES[args.body], args.jobs, args.stages, folder)
                report["runs"][name].append(result)
                print(name, json.dumps(result), flush=True)
    report["load_average_at_end"] = os.getloadavg()
    report["medians"] = {
        name: {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "jobs"}
        for name, runs in report["runs"].items()
    }
    print(json.dumps(report["medians"], indent=2))
    save_report(args.out, report)


if __name__ == "__main__":
    main()
