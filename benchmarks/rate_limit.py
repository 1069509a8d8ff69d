"""Rate-limit precision: 3 worker processes share one 400/s window in front of the demo's fake SES.

Two modes, one script:
- ``exact``: SES allows 450/s, the window 400/s. Reports the most calls SES saw in any sliding second
  (goal <= 404), utilization of the limit (goal >= 97%), SES rejections (must be 0) and rate-limiter Redis
  calls per job (goal <= 0.1), counted from MONITOR by script SHA.
- ``adaptive``: SES allows fewer calls than the window (300/s against 400/s) and the window is adaptive; every
  "Throttling" answer cuts the shared rate. Reports rejections and the time until the last one (convergence).

    python -m benchmarks.rate_limit [--mode exact|adaptive|both] [--jobs 4000] [--reps 3]

Writes benchmarks/results/rate_limit.json.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from flume_rx.client import Flume
from flume_rx.demo import DEMO_QUEUE, DEMO_WORKER, FAKE_SES_ENV, FakeSES, worker_processes
from flume_rx.embedded import RedisServer
from flume_rx.store import _sha

RESULTS = Path(__file__).resolve().parent / "results"


def _config(redis_url: str, namespace: str, allowed: int, adaptive: bool) -> str:
    return f"""
redis_url = "{redis_url}"
namespace = "{namespace}"
imports = ["flume_rx.demo"]
shutdown_timeout = 3000

[pipelines.{DEMO_QUEUE}]
max_demand = 100
rate_limiter = {{ allowed = {allowed}, period = 1000, adaptive = {"true" if adaptive else "false"} }}
processor = {{ stages = 20 }}
retry = {{ max_retries = 10, backoff_initial = 100, backoff_max = 2000 }}
"""


class _ScriptCounter(threading.Thread):
    """Counts EVALSHA calls of one script with MONITOR (exact, and cheap at a few hundred calls a second)."""

    def __init__(self, url: str, sha: str) -> None:
        super().__init__(daemon=True)
        self.url, self.sha, self.count, self._stop = url, sha, 0, threading.Event()

    def run(self) -> None:
        client = redis.Redis.from_url(self.url)
        with client.monitor() as monitor:  # type: ignore[no-untyped-call]
            for command in monitor.listen():
                if self._stop.is_set():
                    return
                parts = command.get("command", "").split(" ", 2)
                if len(parts) >= 2 and parts[0].upper() == "EVALSHA" and parts[1] == self.sha:
                    self.count += 1

    def stop(self) -> None:
        self._stop.set()
        # MONITOR only notices the flag on its next command.
        redis.Redis.from_url(self.url).ping()


def _sliding_counts(times: list[float], period: float = 1.0) -> list[int]:
    return [bisect.bisect_left(times, t + period) - i for i, t in enumerate(times)]


def run_once(mode: str, jobs: int, processes: int = 3, allowed: int = 400) -> dict[str, Any]:
    adaptive = mode == "adaptive"
    ses_limit = 300 if adaptive else 450
    fake = FakeSES(limit=ses_limit, latency_s=0.005)
    with RedisServer() as server, fake.serve() as ses_url, tempfile.TemporaryDirectory() as workdir:
        os.environ[FAKE_SES_ENV] = ses_url
        namespace = f"bench{int(time.time() * 1000)}"
        config_path = Path(workdir) / "bench.toml"
        config_path.write_text(_config(server.url, namespace, allowed, adaptive), encoding="utf-8")
        flume = Flume(server.url, namespace)
        flume.bulk_enqueue(DEMO_QUEUE, [(DEMO_WORKER, [f"u{i}@example.com", "welcome"]) for i in range(jobs)])
        counter = _ScriptCounter(server.url, _sha("take_tokens"))
        counter.start()
        with worker_processes(config_path, server.url, processes) as started:
            deadline = started + jobs / (ses_limit * 0.5) + 60
            while time.monotonic() < deadline and len(fake.accepted) < jobs:
                time.sleep(0.2)
        counter.stop()
        stats = flume.stats([DEMO_QUEUE])[DEMO_QUEUE]
        flume.close()

    accepted = sorted(fake.accepted)
    counts = _sliding_counts(accepted)
    span = [c for t, c in zip(accepted, counts, strict=True) if t + 1.0 <= accepted[-1]]
    result: dict[str, Any] = {
        "mode": mode,
        "jobs": jobs,
        "processes": processes,
        "limit_per_s": allowed,
        "ses_limit_per_s": ses_limit,
        "sent": len(accepted),
        "ses_rejections": fake.rejected,
        "most_in_any_second": max(counts) if counts else 0,
        # Mean count over every sliding second that lies wholly inside the run, as a share of the limit.
        "utilization": statistics.fmean(span) / allowed if span else 0.0,
        "limiter_calls_per_job": counter.count / max(1, len(accepted)),
        "failed_attempts": stats["failed"],
        "dead": stats["dead"],
        "elapsed_s": accepted[-1] - accepted[0] if len(accepted) > 1 else 0.0,
    }
    if adaptive:
        rejected_at = fake.rejected_times
        last = max(rejected_at) if rejected_at else accepted[0]
        result["converged_after_s"] = last - accepted[0]
        after = [t for t in accepted if t > last + 1.0]
        result["rate_after_convergence"] = (
            (len(after) - 1) / (after[-1] - after[0]) if len(after) > 2 else None
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["exact", "adaptive", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "rate_limit.json")
    args = parser.parse_args()
    modes = ["exact", "adaptive"] if args.mode == "both" else [args.mode]
    report: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "runs": {},
        "medians": {},
    }
    for mode in modes:
        runs = [run_once(mode, args.jobs) for _ in range(args.reps)]
        report["runs"][mode] = runs
        numeric = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
        report["medians"][mode] = {
            k: statistics.median(r[k] for r in runs if r.get(k) is not None) for k in numeric
        }
        print(json.dumps({mode: report["medians"][mode]}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
