"""CPU instructions per job, counted by valgrind: a figure the machine's load cannot move.

    python -m benchmarks.instructions --tree ../flume-old --tree . [--stages 5] [--max-demand 100] [--no-gc]

On a shared machine CPU time per job swings by 10-30% from run to run, so a regression of 10% needs many
paired runs to show, and its cause none. Valgrind (cachegrind, no cache simulation) counts the instructions a
process runs instead; a drain of ``--small`` and one of ``--large`` async no-op jobs in one process each (the
worker in-process, as ``benchmarks/throughput.py`` runs it), and the difference over the jobs between them is
the instructions per job, start-up and imports left out. The jobs are enqueued beforehand by the same tree in
a process of its own, outside valgrind: counted with the drain, the enqueue's cost and the collections the
garbage collector ran during it (before ``--no-gc`` turned it off; a full one or not, as the allocation
counters happened to fall) were counted as the worker's. Repeated runs of one tree agree within about 2%
(batch sizes still depend on timing). ``--no-gc`` turns the garbage collector off for the drain, to tell its
share apart. ``--worker sync`` drains a sync no-op instead, ``--worker await`` an async job awaiting 1 ms.
Needs ``valgrind`` on the PATH; runs ~40x slower than native. Writes ``benchmarks/results/instructions.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.redis_server import private_redis
from benchmarks.saved import commit_of, save_report

RESULTS = Path(__file__).resolve().parent / "results"

IMPORTS = """
import asyncio, gc, os, sys
import redis
from flume_rx import Flume, worker
try:
    from flume_rx.model import config as config_module
    from flume_rx.surfaces.runtime import WorkerRuntime
except ImportError:  # a checkout from before the layers had folders of their own
    from flume_rx import config as config_module
    from flume_rx.runtime import WorkerRuntime

@worker("InstrNoop")
async def noop(_n: int) -> None:
    return None

@worker("InstrSyncNoop")
def sync_noop(_n: int) -> None:
    return None

@worker("InstrAwait")
async def await_1ms(_n: int) -> None:
    await asyncio.sleep(0.001)

url, jobs, stages, max_demand, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
"""

ENQUEUE = (
    IMPORTS
    + """
redis.Redis.from_url(url).flushdb()
flume = Flume(url, "instr")
for first in range(0, jobs, 10000):
    flume.bulk_enqueue("instr", [(name, [i]) for i in range(first, min(jobs, first + 10000))])
"""
)

DRAIN = (
    IMPORTS
    + """
flume = Flume(url, "instr")
config = config_module.parse({"redis_url": url, "namespace": "instr", "pipelines": {"instr": {
    "queue": "instr", "max_demand": max_demand, "processor": {"stages": stages}}}})
runtime = WorkerRuntime(config, burst=True)
gc.collect()
if os.environ.get("BENCH_NO_GC"):
    gc.disable()
asyncio.run(runtime.run())
assert flume.stats(["instr"])["instr"]["processed"] == jobs
"""
)

WORKERS = {"async": "InstrNoop", "sync": "InstrSyncNoop", "await": "InstrAwait"}


def instructions(
    tree: Path, url: str, jobs: int, stages: int, max_demand: int, no_gc: bool, worker: str = "async"
) -> int:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if no_gc:
        env["BENCH_NO_GC"] = "1"
    argv = [url, str(jobs), str(stages), str(max_demand), WORKERS[worker]]
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-c", ENQUEUE, *argv], env=env, cwd=folder, check=True)
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
             sys.executable, "-c", DRAIN, *argv],
            env=env, cwd=folder, capture_output=True, text=True, check=True,
        )  # fmt: skip
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise RuntimeError(f"valgrind printed no instruction count:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", type=Path, action="append", required=True, help="a checkout (repeatable)")
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--max-demand", type=int, default=100)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=2500)
    parser.add_argument("--no-gc", action="store_true", help="garbage collector off during the drain")
    parser.add_argument("--worker", choices=sorted(WORKERS), default="async", help="the job drained")
    parser.add_argument("--pairs", type=int, default=1, help="measure the trees this many times, alternating")
    parser.add_argument("--out", type=Path, default=RESULTS / "instructions.json")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k not in ("tree", "out")},
        "load_average_at_start": os.getloadavg(),
        "trees": {},
    }
    with private_redis() as url:
        for pair in range(args.pairs):
            for tree in args.tree:
                changed = subprocess.run(
                    ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                    capture_output=True,
                )
                counts = [
                    instructions(tree, url, jobs, args.stages, args.max_demand, args.no_gc, args.worker)
                    for jobs in (args.small, args.large)
                ]
                per_job = (counts[1] - counts[0]) / (args.large - args.small)
                entry = report["trees"].setdefault(
                    str(tree),
                    {"commit": commit_of(tree) + ("+changes" if changed.stdout.strip() else ""),
                     "start_up": counts[0], "per_job_runs": []},
                )  # fmt: skip
                entry["per_job_runs"].append(per_job)
                entry["per_job"] = statistics.median(entry["per_job_runs"])
                print(
                    f"{tree} ({entry['commit']}), pair {pair + 1}: {per_job:,.0f} instructions per job",
                    flush=True,
                )
    save_report(args.out, report)


if __name__ == "__main__":
    main()
