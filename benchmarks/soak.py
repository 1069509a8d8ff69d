"""Soak: many jobs through several worker processes, with periodic SIGKILLs, then look for leaks.

``python -m benchmarks.soak [--jobs 1000000] [--processes 4] [--kills 5] [--redis-url URL] [--out FILE]``

Without ``--redis-url`` it starts a private redis-server. The workers are real ``flume-rx worker`` processes
running a no-op async worker behind a (non-binding) shared rate limiter, so the limiter's keys are exercised.
It reports the drain rate, the duplicates the kills caused, the RSS of the workers that were never killed
(early in the drain and at its end) and the Redis keys before and after: after a drain and a graceful stop
no in-flight list or consumer heartbeat may remain, and the limiter's keys must expire by themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from flume_rx import Flume, worker
from flume_rx.store.keys import Keys
from flume_rx.surfaces.embedded import RedisServer

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "soak"
NAMESPACE = "soak"
ENQUEUE_CHUNK = 10_000


@worker("SoakNoop")
async def soak_noop(n: int) -> None:
    """Does nothing: the soak measures the machinery, not the work."""


def _config(directory: Path, redis_url: str) -> Path:
    path = directory / "soak.toml"
    path.write_text(
        f'redis_url = "{redis_url}"\n'
        f'namespace = "{NAMESPACE}"\n'
        'imports = ["benchmarks.soak"]\n'
        "orphan_timeout = 2000\n"
        "shutdown_timeout = 5000\n"
        "[pipelines.soak]\n"
        f'queue = "{QUEUE}"\n'
        "max_demand = 200\n"
        "processor = { stages = 50 }\n"
        "rate_limiter = { allowed = 1000000, period = 1000 }\n",
        encoding="utf-8",
    )
    return path


def _spawn(config: Path, log_dir: Path, name: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log_dir / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "flume_rx", "worker", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _keys(client: redis.Redis) -> dict[str, list[str]]:
    found = sorted(k.decode() for k in client.scan_iter(match=f"*{NAMESPACE}*", count=1000))
    return {
        "all": found,
        "inflight": [k for k in found if ":inflight:" in k],
        "consumers": [k for k in found if k.endswith(":consumers")],
        "rate": [k for k in found if ":rate:" in k],
    }


def _processed(client: redis.Redis) -> int:
    raw: Any = client.hget(Keys(NAMESPACE).of(QUEUE).stats, "processed")
    return int(raw or 0)


def run_soak(
    redis_url: str, jobs: int, processes: int, kills: int, timeout_s: float = 1800
) -> dict[str, Any]:
    """Drain ``jobs`` no-op jobs with ``processes`` workers, SIGKILLing worker 0 ``kills`` times on the way."""
    client = redis.Redis.from_url(redis_url)
    with tempfile.TemporaryDirectory(prefix="flume-soak-") as tmp:
        directory = Path(tmp)
        config = _config(directory, redis_url)
        started = time.monotonic()
        with Flume(redis_url, NAMESPACE) as flume:
            for start in range(0, jobs, ENQUEUE_CHUNK):
                flume.bulk_enqueue(
                    QUEUE, [("SoakNoop", [i]) for i in range(start, min(jobs, start + ENQUEUE_CHUNK))]
                )
        enqueue_s = time.monotonic() - started
        keys_before = _keys(client)
        workers = [_spawn(config, directory, f"w{i}") for i in range(processes)]
        kill_at = [jobs * (k + 1) // (kills + 1) for k in range(kills)]
        killed = 0
        rss_early: dict[int, int] = {}
        drain_started = time.monotonic()
        try:
            while _processed(client) < jobs:
                done = _processed(client)
                if not rss_early and done >= jobs // 10:
                    rss_early = {i: _rss_kb(w.pid) for i, w in enumerate(workers) if i != 0}
                if killed < kills and done >= kill_at[killed]:
                    workers[0].kill()
                    workers[0].wait()
                    workers[0] = _spawn(config, directory, f"w0-{killed}")
                    killed += 1
                if time.monotonic() - drain_started > timeout_s:
                    raise TimeoutError(f"soak did not drain {jobs} jobs within {timeout_s} s (done {done})")
                time.sleep(0.05)
            drain_s = time.monotonic() - drain_started
            rss_end = {i: _rss_kb(w.pid) for i, w in enumerate(workers) if i != 0}
        finally:
            for process in workers:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            codes = [process.wait(60) for process in workers]
        stats = Flume(redis_url, NAMESPACE).stats([QUEUE])[QUEUE]
        keys_after = _keys(client)
        time.sleep(2.5)  # the limiter's keys live period + hold after their last grant
        rate_keys_later = _keys(client)["rate"]
    return {
        "jobs": jobs,
        "processes": processes,
        "kills": killed,
        "enqueue_s": round(enqueue_s, 2),
        "drain_s": round(drain_s, 2),
        "drain_jobs_per_s": round(jobs / drain_s),
        "processed": stats["processed"],
        "acked_twice": stats["processed"] - jobs,
        "queued": stats["queued"],
        "in_flight": stats["in_flight"],
        "retry": stats["retry"],
        "dead": stats["dead"],
        "exit_codes": codes,
        "rss_kb_at_10pct": rss_early,
        "rss_kb_at_end": rss_end,
        "keys_before": len(keys_before["all"]),
        "keys_after": keys_after["all"],
        "leaked_inflight": keys_after["inflight"],
        "leaked_consumers": keys_after["consumers"],
        "rate_keys_after_expiry": rate_keys_later,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--redis-url", help="use this Redis (its namespace 'soak' is emptied first)")
    parser.add_argument("--out", help="write the result as JSON here too")
    args = parser.parse_args(argv)
    if args.redis_url:
        result = run_soak(args.redis_url, args.jobs, args.processes, args.kills)
    else:
        with RedisServer() as server:
            result = run_soak(server.url, args.jobs, args.processes, args.kills)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
