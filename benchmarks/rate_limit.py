"""Rate-limit precision: 3 worker processes share one 400/s window in front of the demo's fake SES.

Two modes, one script:
- ``exact``: SES allows 450/s, the window 400/s. Reports the most calls SES saw in any sliding second
  (goal <= 404), utilization of the limit (goal >= 97%), SES rejections (must be 0) and rate-limiter Redis
  calls per job (goal <= 0.1), counted from MONITOR by script SHA, and from the window itself its grants per
  job (a take answered with several slices makes several) and the tokens given back unstarted per job.
- ``adaptive``: the window allows 400/s and is adaptive; the fake SES allows 300/s, then is raised to 380/s
  mid-run (2 worker processes, 5 stages each, a backlog). Every "Throttling" answer goes back to the shared
  window, which aims its rate at what SES accepted. Per phase: the share of SES's rate accepted from 3 s after
  the change to the end of the phase (goal >= 90%), refusals (goal <= 30 per change), the last refusal's time
  after the change; no job may fail. Refusals come in events (a burst of calls the downstream refused before
  the processes stopped, then a gap): per phase, how many events and the largest, the first being the
  answer to the change. What one event costs (calls in flight, reaction time) depends less on the load than
  how many events there are (a stalled worker's catch-up burst is one more). A timeline of the window's effective rate, SES's limit and SES's accepted
  calls in the trailing second is kept for the plot.

    python -m benchmarks.rate_limit [--mode exact|adaptive|both] [--jobs 4000] [--reps 3]
        [--stages 20] [--cpu-hog N] [--base <worktree of an older commit>]

The exact mode also counts starts at the job's first line (the demo's worker stamps it in Redis), which a
CPU-starved process may run after its grant's hold. ``--cpu-hog N`` runs N busy-looping processes through each
run, to starve the workers on purpose; ``--base`` runs each repetition with the older tree's flume_rx first and
this one's after it (the same benchmark code, one subprocess each), so both meet the same load.

Writes benchmarks/results/rate_limit.json (exact) and benchmarks/results/adaptive_rate.json (adaptive).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from benchmarks.saved import commit_of, save_report
from flume_rx.store import SyncStore, _sha
from flume_rx.store.keys import Keys
from flume_rx.surfaces.client import Flume
from flume_rx.surfaces.demo import (
    DEMO_QUEUE,
    DEMO_WORKER,
    FAKE_SES_ENV,
    SES_STARTS_ENV,
    STARTS_KEY_ENV,
    FakeSES,
    worker_processes,
)
from flume_rx.surfaces.embedded import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"


def _config(
    redis_url: str, namespace: str, allowed: int, stages: int = 20, hold_ms: int | None = None
) -> str:
    hold = "" if hold_ms is None else f", hold = {hold_ms}"
    return f"""
redis_url = "{redis_url}"
namespace = "{namespace}"
imports = ["flume_rx.surfaces.demo"]
shutdown_timeout = 3000

[pipelines.{DEMO_QUEUE}]
max_demand = 100
rate_limiter = {{ allowed = {allowed}, period = 1000{hold} }}
processor = {{ stages = {stages} }}
retry = {{ max_retries = 10, backoff_initial = 100, backoff_max = 2000 }}
"""


def _adaptive_config(redis_url: str, namespace: str, allowed: int, stages: int) -> str:
    return f"""
redis_url = "{redis_url}"
namespace = "{namespace}"
imports = ["flume_rx.surfaces.demo"]
shutdown_timeout = 3000

[pipelines.{DEMO_QUEUE}]
max_demand = 50
rate_limiter = {{ allowed = {allowed}, period = 1000, adaptive = true }}
processor = {{ stages = {stages} }}
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


@contextmanager
def _cpu_hog(processes: int) -> Iterator[None]:
    """``processes`` busy loops for the block's duration: the workers get what CPU the machine has left."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


def run_once(
    jobs: int,
    processes: int = 3,
    allowed: int = 400,
    stages: int = 20,
    cpu_hog: int = 0,
    hold_ms: int | None = None,
) -> dict[str, Any]:
    """The exact mode: SES allows 450/s, the window 400/s; nothing may be rejected."""
    ses_limit = 450
    fake = FakeSES(limit=ses_limit, latency_s=0.005)
    load_before = os.getloadavg()[0]
    with RedisServer() as server, fake.serve() as ses_url, tempfile.TemporaryDirectory() as workdir:
        namespace = f"bench{int(time.time() * 1000)}"
        _demo_env(ses_url, server.url, namespace)
        config_path = Path(workdir) / "bench.toml"
        config_path.write_text(_config(server.url, namespace, allowed, stages, hold_ms), encoding="utf-8")
        flume = Flume(server.url, namespace)
        flume.bulk_enqueue(DEMO_QUEUE, [(DEMO_WORKER, [f"u{i}@example.com", "welcome"]) for i in range(jobs)])
        counter = _ScriptCounter(server.url, _sha("take_tokens"))
        counter.start()
        with _cpu_hog(cpu_hog), worker_processes(config_path, server.url, processes) as started:
            deadline = started + jobs / (ses_limit * 0.5) + 60
            while time.monotonic() < deadline and len(fake.accepted) < jobs:
                time.sleep(0.2)
            load_during = os.getloadavg()[0]
            # Read while the window lives (it expires about a period after its last grant): how many grants
            # it made (a take of several slices makes several) and how many tokens came back unstarted.
            window = redis.Redis.from_url(server.url).hgetall(Keys(namespace).rate(DEMO_QUEUE)[1])
        counter.stop()
        stats = flume.stats([DEMO_QUEUE])[DEMO_QUEUE]
        flume.close()
        stamped = redis.Redis.from_url(server.url).lrange(f"{namespace}:demo:starts", 0, -1)
    first_lines = sorted(float(stamp) for stamp in stamped)  # type: ignore[union-attr]

    accepted = sorted(fake.accepted)
    counts = _sliding_counts(accepted)
    span = [c for t, c in zip(accepted, counts, strict=True) if t + 1.0 <= accepted[-1]]
    return {
        "mode": "exact",
        "jobs": jobs,
        "processes": processes,
        "limit_per_s": allowed,
        "ses_limit_per_s": ses_limit,
        "sent": len(accepted),
        "ses_rejections": fake.rejected,
        "most_in_any_second": max(counts) if counts else 0,
        # The worker's first line, where the limit is meant to hold; SES sees each call an HTTP hop later.
        "most_first_lines_in_any_second": max(_sliding_counts(first_lines), default=0),
        "first_lines": len(first_lines),
        "stages": stages,
        "cpu_hog_processes": cpu_hog,
        "load_average_1m": [load_before, load_during],
        # Mean count over every sliding second that lies wholly inside the run, as a share of the limit.
        "utilization": statistics.fmean(span) / allowed if span else 0.0,
        "limiter_calls_per_job": counter.count / max(1, len(accepted)),
        "grants_per_job": int(window.get(b"seq", 0)) / max(1, len(accepted)),
        "tokens_given_back_per_job": int(window.get(b"returned", 0)) / max(1, len(accepted)),
        "failed_attempts": stats["failed"],
        "dead": stats["dead"],
        "elapsed_s": accepted[-1] - accepted[0] if len(accepted) > 1 else 0.0,
    }


def _demo_env(ses_url: str, redis_url: str, namespace: str) -> None:
    # Inherited by the spawned worker processes: where the fake SES is, and where the demo stamps starts.
    os.environ.update(
        {FAKE_SES_ENV: ses_url, SES_STARTS_ENV: redis_url, STARTS_KEY_ENV: f"{namespace}:demo:starts"}
    )


REFUSAL_GAP_S = 0.5
"""Refusals closer than this to the one before belong to the same event."""


def refusal_events(times: list[float], gap_s: float = REFUSAL_GAP_S) -> list[int]:
    """How many refusals each event had, in order: sorted refusal ``times`` split where ``gap_s`` passes
    without one.

    >>> refusal_events([0.70, 0.71, 0.75, 2.0, 2.01, 4.4])
    [3, 2, 1]
    """
    sizes: list[int] = []
    last = -math.inf
    for t in times:
        if t - last < gap_s:
            sizes[-1] += 1
        else:
            sizes.append(1)
        last = t
    return sizes


# The downstream's limit per phase and how long each lasts: it starts below the window, then is raised.
PHASES: tuple[tuple[int, float], ...] = ((300, 12.0), (380, 12.0))
SETTLE_S = 3.0  # the share is measured from this long after each change


def run_adaptive_once(
    phases: tuple[tuple[int, float], ...] = PHASES, processes: int = 2, stages: int = 5, allowed: int = 400
) -> dict[str, Any]:
    """The adaptive mode: a backlog through an adaptive 400/s window into a fake SES whose limit changes."""
    jobs = int(sum(limit * seconds for limit, seconds in phases) * 1.5) + 1000
    fake = FakeSES(limit=phases[0][0], latency_s=0.005)
    # The machine is shared: the load average says how much CPU the workers had (1-minute, before and after).
    load_before = os.getloadavg()[0]
    with RedisServer() as server, fake.serve() as ses_url, tempfile.TemporaryDirectory() as workdir:
        namespace = f"bench{int(time.time() * 1000)}"
        _demo_env(ses_url, server.url, namespace)
        config_path = Path(workdir) / "bench.toml"
        config_path.write_text(_adaptive_config(server.url, namespace, allowed, stages), encoding="utf-8")
        flume = Flume(server.url, namespace)
        for start in range(0, jobs, 10_000):
            chunk = range(start, min(jobs, start + 10_000))
            flume.bulk_enqueue(DEMO_QUEUE, [(DEMO_WORKER, [f"u{i}@example.com", "welcome"]) for i in chunk])
        store = SyncStore.from_url(server.url, namespace)
        timeline: list[list[float]] = []
        changes: list[float] = []
        with worker_processes(config_path, server.url, processes) as started:
            # The first phase starts with the first call SES sees: the window at 400/s meets SES at 300/s.
            while not fake.accepted and time.monotonic() < started + 120:
                time.sleep(0.01)
            t0 = fake.accepted[0]
            for index, (limit, seconds) in enumerate(phases):
                if index:
                    fake.limit = limit
                changes.append(t0 if not index else time.monotonic())
                until = changes[-1] + seconds
                while (now := time.monotonic()) < until:
                    seen = store.window_rate(DEMO_QUEUE)
                    rate = seen[0] if seen is not None else float(allowed)
                    timeline.append([now - t0, rate, float(fake.limit), float(fake.rate_now())])
                    time.sleep(0.1)
            ended = time.monotonic()
        stats = flume.stats([DEMO_QUEUE])[DEMO_QUEUE]
        store.close()
        flume.close()

    accepted = sorted(fake.accepted)
    refused = sorted(fake.rejected_times)
    result_phases = []
    for index, (limit, _seconds) in enumerate(phases):
        start = changes[index]
        end = changes[index + 1] if index + 1 < len(changes) else ended
        settled = [t for t in accepted if start + SETTLE_S <= t < end]
        rate = len(settled) / (end - start - SETTLE_S)
        in_phase = [t for t in refused if start <= t < end]
        # The window's own rate over the same span: what the estimator allowed, next to what got through
        # (on a loaded machine the workers may not keep up with it).
        window = [row[1] for row in timeline if start + SETTLE_S <= row[0] + t0 < end]
        events = refusal_events(in_phase)
        result_phases.append(
            {
                "downstream_limit_per_s": limit,
                "seconds": end - start,
                "accepted_per_s_after_settle": rate,
                "share_of_downstream": rate / limit,
                "window_rate_after_settle_mean": statistics.fmean(window) if window else None,
                "refusals": len(in_phase),
                "refusals_after_settle": sum(1 for t in in_phase if t >= start + SETTLE_S),
                "last_refusal_after_change_s": (in_phase[-1] - start) if in_phase else None,
                "refusal_events": len(events),
                "first_refusal_event": events[0] if events else 0,
                "largest_refusal_event": max(events, default=0),
            }
        )
    return {
        "mode": "adaptive",
        "limit_per_s": allowed,
        "processes": processes,
        "stages": stages,
        "settle_s": SETTLE_S,
        "phases": result_phases,
        "failed_attempts": stats["failed"],
        "dead": stats["dead"],
        "refusals_at_s": [t - t0 for t in refused],
        "load_average_1m": [load_before, os.getloadavg()[0]],
        "timeline_columns": ["t_s", "window_rate_per_s", "downstream_limit_per_s", "accepted_last_s"],
        "timeline": timeline,
    }


def _median_or_none(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def adaptive_medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase, the median over runs of each figure; and the worst of the failures."""
    phases = []
    for index in range(len(runs[0]["phases"])):
        figures = [run["phases"][index] for run in runs]
        phases.append({key: _median_or_none([f[key] for f in figures]) for key in figures[0]})
    return {
        "phases": phases,
        "failed_attempts_max": max(run["failed_attempts"] for run in runs),
        "dead_max": max(run["dead"] for run in runs),
        "load_average_1m": [
            min(min(run.get("load_average_1m", [math.nan])) for run in runs),
            max(max(run.get("load_average_1m", [math.nan])) for run in runs),
        ],
    }


def _machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["exact", "adaptive", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=4000, help="jobs of the exact mode")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--stages", type=int, default=20, help="the exact mode's processor stages")
    parser.add_argument(
        "--allowed",
        type=int,
        default=400,
        help="the exact mode's limit per second (a loaded machine may not reach 400)",
    )
    parser.add_argument(
        "--hold", type=int, default=None, help="the exact mode's window hold in ms (default: flume_rx's own)"
    )
    parser.add_argument(
        "--cpu-hog", type=int, default=0, help="busy-looping processes through each exact run"
    )
    parser.add_argument(
        "--base", type=Path, default=None, help="an older worktree: its runs alternate with this tree's"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "rate_limit.json", help="the exact mode's JSON")
    parser.add_argument(
        "--adaptive-out", type=Path, default=RESULTS / "adaptive_rate.json", help="the adaptive mode's JSON"
    )
    args = parser.parse_args()
    if args.mode in ("exact", "both") and args.base is not None:
        trees = {"before": args.base.resolve(), "after": Path(__file__).resolve().parent.parent}
        paired: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for _ in range(args.reps):
            for side, tree in trees.items():
                paired[side].append(
                    _run_in_tree(tree, args.jobs, args.stages, args.cpu_hog, args.allowed, args.hold)
                )
                print(side, json.dumps(_headline(paired[side][-1])), flush=True)
        report = {
            "machine": _machine(),
            "commits": {side: commit_of(tree, short=False) for side, tree in trees.items()},
            "runs": paired,
            "medians": {side: _medians(runs) for side, runs in paired.items()},
        }
        print(json.dumps(report["medians"], indent=2))
        save_report(args.out, report)
    elif args.mode in ("exact", "both"):
        runs = [
            run_once(
                args.jobs, allowed=args.allowed, stages=args.stages, cpu_hog=args.cpu_hog, hold_ms=args.hold
            )
            for _ in range(args.reps)
        ]
        medians = _medians(runs)
        print(json.dumps({"exact": medians}, indent=2))
        report = {"machine": _machine(), "runs": {"exact": runs}, "medians": {"exact": medians}}
        save_report(args.out, report)
    if args.mode in ("adaptive", "both"):
        adaptive_runs = []
        for _ in range(args.reps):
            adaptive_runs.append(run_adaptive_once())
            print(json.dumps(adaptive_runs[-1]["phases"], indent=2))
        medians = adaptive_medians(adaptive_runs)
        print(json.dumps({"adaptive": medians}, indent=2))
        report = {
            "machine": _machine(),
            "goals": {"share_of_downstream_min": 0.9, "refusals_per_change_max": 30, "failed": 0},
            "runs": adaptive_runs,
            "medians": medians,
        }
        save_report(args.adaptive_out, report)


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    numeric = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return {k: statistics.median(r[k] for r in runs) for k in numeric}


def _headline(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("most_first_lines_in_any_second", "most_in_any_second", "utilization", "limiter_calls_per_job")
    return {key: run[key] for key in keys} | {"load": run["load_average_1m"]}


def _run_in_tree(
    tree: Path, jobs: int, stages: int, cpu_hog: int, allowed: int, hold_ms: int | None = None
) -> dict[str, Any]:
    """One exact run with ``tree``'s flume_rx (in a subprocess whose path starts with it) and this benchmark."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run.json"
        hold = "" if hold_ms is None else f"'--hold', '{hold_ms}', "
        code = (
            "import runpy, sys; "
            f"sys.argv = ['rate_limit', '--mode', 'exact', '--reps', '1', '--jobs', '{jobs}', {hold}"
            f"'--stages', '{stages}', '--cpu-hog', '{cpu_hog}', '--allowed', '{allowed}', '--out', {str(out)!r}]; "
            f"runpy.run_path({__file__!r}, run_name='__main__')"
        )
        env = {**os.environ, "PYTHONPATH": str(tree)}
        # From the scratch folder: with -c the current directory comes first on sys.path, then PYTHONPATH.
        subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=folder, check=True, stdout=subprocess.DEVNULL
        )
        run: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))["runs"]["exact"][0]
        return run


if __name__ == "__main__":
    main()
