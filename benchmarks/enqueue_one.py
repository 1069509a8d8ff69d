"""One job per ``Flume.enqueue`` call, as a web request enqueues: calls per second and Redis's time per call.

    python -m benchmarks.enqueue_one [--calls 20000] [--spaced 1000] [--reps 3]
        [--base <worktree of an older commit>]

Each tree (this one, and ``--base`` if given) runs in a fresh interpreter with its own ``flume_rx`` first on
the path, against a private Redis, one tree after the other for each repetition, so a machine whose speed
drifts slows them alike. A run makes 500 calls to warm up, then ``--calls`` calls in a loop; reported: calls
per second (the producer's whole call, its round trip included) and the microseconds Redis spent per call
(``INFO commandstats``, every command counted, over the calls made). For reference, in the same interpreter
after it: a bare redis-py ``LPUSH`` of one payload of the same size, calls per second; and for both, how
often each call reads its socket (``recv_into`` calls counted by cProfile over 2,000 more calls). Then
``--spaced`` calls one every 5 ms, as the latency benchmark enqueues, each run cold: the median microseconds
before the call writes its command to the socket (what enqueue-to-start pays of the producer) and of the whole
call. Writes
``benchmarks/results/enqueue_one.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.redis_server import private_redis
from benchmarks.runner import machine_info
from benchmarks.saved import commit_of, save_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

RUN = """
import json, statistics, sys, time
import redis
from flume_rx import Flume
url, calls, spaced = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
flume = Flume(redis_url=url, namespace="e1")
bare = redis.Redis.from_url(url)
for _ in range(500):
    flume.enqueue("q", "Job", [1])
bare.config_resetstat()
began = time.perf_counter()
for _ in range(calls):
    flume.enqueue("q", "Job", [1])
seconds = time.perf_counter() - began
stats = bare.info("commandstats")
redis_us = sum(v["usec"] for k, v in stats.items() if k != "cmdstat_config|resetstat")
queue_key = next(bare.scan_iter("*:queue"))
payload = b"x" * len(bare.lindex(queue_key, 0))
began = time.perf_counter()
for _ in range(calls):
    bare.lpush("bare", payload)
lpush_seconds = time.perf_counter() - began


def reads_per_call(call):
    import cProfile, pstats
    profile = cProfile.Profile()
    profile.runcall(lambda: [call() for _ in range(2000)])
    found = [v[1] for k, v in pstats.Stats(profile).stats.items() if "'recv_into' of '_socket.socket'" in k[2]]
    return sum(found) / 2000


# Spaced as the latency benchmark enqueues (one call every 5 ms): a producer that wakes for each call runs it
# cold. Timed: the call's Python before its command is written to the socket, and the whole call.
import redis.connection
written = [0.0]
send = redis.connection.Connection.send_packed_command


def stamped(self, command, check_health=True):
    written[0] = time.perf_counter()
    send(self, command, check_health)


redis.connection.Connection.send_packed_command = stamped
before_write, whole = [], []
for i in range(spaced + 100):
    time.sleep(0.005)
    began = time.perf_counter()
    flume.enqueue("q", "Job", [1])
    ended = time.perf_counter()
    if i >= 100:
        before_write.append((written[0] - began) * 1e6)
        whole.append((ended - began) * 1e6)
redis.connection.Connection.send_packed_command = send

print(json.dumps({
    "calls_per_s": calls / seconds,
    "spaced_us_before_write_p50": statistics.median(before_write),
    "spaced_us_per_call_p50": statistics.median(whole),
    "redis_us_per_call": redis_us / calls,
    "bare_lpush_calls_per_s": calls / lpush_seconds,
    "socket_reads_per_enqueue": reads_per_call(lambda: flume.enqueue("q", "Job", [1])),
    "socket_reads_per_bare_lpush": reads_per_call(lambda: bare.lpush("bare", payload)),
}))
"""


def run(tree: Path, calls: int, spaced: int) -> dict[str, Any]:
    with private_redis() as url:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        done = subprocess.run(
            [sys.executable, "-c", RUN, url, str(calls), str(spaced)],
            env=env,
            cwd=tree,
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: the producer failed: {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.enqueue_one", description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--spaced", type=int, default=1000, help="calls made 5 ms apart, each timed")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--base", type=Path, default=None, help="a worktree of the commit to compare with")
    parser.add_argument("--out", type=Path, default=RESULTS / "enqueue_one.json")
    args = parser.parse_args(argv)
    trees = {"this": ROOT}
    if args.base is not None:
        trees = {"base": args.base.resolve(), **trees}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for _ in range(args.reps):
        for name, tree in trees.items():
            result = run(tree, args.calls, args.spaced)
            runs[name].append(result)
            print(name, json.dumps(result), flush=True)
    with private_redis() as url:
        machine = machine_info(url)
    medians = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    report = {
        "machine": machine,
        "commits": {name: commit_of(tree) for name, tree in trees.items()},
        "config": {"calls": args.calls, "spaced": args.spaced, "reps": args.reps},
        "runs": runs,
        "medians": medians,
    }
    print(json.dumps(medians, indent=2))
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
