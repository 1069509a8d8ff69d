"""Two worker processes draining one queue of INCR jobs: where they run (``cpu_affinity``), alternated.

    python -m benchmarks.cpu_affinity [--jobs 40000] [--reps 3]

Variants, each two separate ``flume-rx worker --burst`` processes on the same backlog of one redis-py ``INCR``
per job (to a second private Redis): ``free`` (``cpu_affinity = "off"``, where the OS puts them), ``same_cpu``
(both kept to the first allowed CPU from their start: what two lone processes would do if a lone process kept
to the first CPU by default), ``one_each`` (kept to one CPU each from their start) and ``keeper`` (the default,
``"spread"``: each claims a CPU of its own once busy; its claims in a folder of this run's). jobs/s from the
workers' start to the last one's exit, start-up included. Writes ``benchmarks/results/cpu_affinity.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.redis_server import private_redis
from benchmarks.saved import commit_of, save_report
from flume_rx import Flume

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

WORKERS = """
import os, redis
from flume_rx import worker

_work = None

@worker("AffinityIncr")
def affinity_incr(_n):
    global _work
    if _work is None:
        _work = redis.Redis.from_url(os.environ["BENCH_WORK_URL"])
    _work.incr("hits")
"""


def _variants() -> dict[str, tuple[str, str]]:
    cpus = sorted(os.sched_getaffinity(0))
    first, second = cpus[0], cpus[1 % len(cpus)]
    return {
        "free": ('"off"', '"off"'),
        "same_cpu": (f"[{first}]", f"[{first}]"),
        "one_each": (f"[{first}]", f"[{second}]"),
        "keeper": ('"spread"', '"spread"'),
    }


def _drain(url: str, work_url: str, affinities: tuple[str, str], jobs: int, folder: Path) -> float:
    with Flume(redis_url=url, namespace="affinity") as flume:
        flume.bulk_enqueue("affinity", [("AffinityIncr", [n]) for n in range(jobs)])
    # TMPDIR: the keeper's claims stay among this run's processes.
    env = {
        **os.environ,
        "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}",
        "BENCH_WORK_URL": work_url,
        "TMPDIR": str(folder),
    }
    started = time.monotonic()
    processes = []
    for index, affinity in enumerate(affinities):
        config = folder / f"worker{index}.toml"
        config.write_text(
            f'redis_url = "{url}"\nnamespace = "affinity"\nimports = ["affinity_workers"]\n'
            f'cpu_affinity = {affinity}\n[pipelines.affinity]\nqueue = "affinity"\n'
        )
        command = [sys.executable, "-m", "flume_rx", "worker", "--config", str(config), "--burst"]
        processes.append(subprocess.Popen([*command, "--log-level", "warning"], env=env))
    for process in processes:
        if process.wait(timeout=600) != 0:
            raise RuntimeError(f"a worker exited with {process.returncode}")
    return jobs / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_affinity.json")
    args = parser.parse_args()
    variants = _variants()
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "commit": commit_of(ROOT),
        "config": {"jobs": args.jobs, "reps": args.reps, "processes": 2, "body": "one redis-py INCR"},
        "variants": {name: list(pair) for name, pair in variants.items()},
        "load_average_at_start": os.getloadavg(),
        "runs": {name: [] for name in variants},
    }
    with private_redis() as url, private_redis() as work_url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "affinity_workers.py").write_text(WORKERS)
        for _ in range(args.reps):
            for name, affinities in variants.items():  # alternated
                rate = _drain(url, work_url, affinities, args.jobs, folder)
                report["runs"][name].append({"jobs_per_s": rate})
                print(name, f"{rate:,.0f} jobs/s", flush=True)
    report["load_average_at_end"] = os.getloadavg()
    report["medians"] = {
        name: statistics.median(run["jobs_per_s"] for run in runs) for name, runs in report["runs"].items()
    }
    print(report["medians"])
    save_report(args.out, report)


if __name__ == "__main__":
    main()
