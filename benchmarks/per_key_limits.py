"""Per-key rate limits with 1,000 keys: Redis calls per job, throughput, and that no key went over its limit.

``python -m benchmarks.per_key_limits [--keys 1000] [--jobs-per-key 10] [--allowed 5] [--out PATH]`` starts a
private redis-server, enqueues jobs spread round-robin over the keys, drains them with one worker process
whose pipeline limits each key to ``allowed`` starts per second (``rate_limiter.key_from``), and writes JSON
to ``benchmarks/results/per_key_limits.json``: token calls (one Redis round trip each, however many keys it
serves) per job, keys per call, all Redis commands per job, jobs per second, and the most starts any key
had in any one-second window (it must not exceed ``allowed``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis

from flume_rx import Flume, worker
from flume_rx import config as config_module
from flume_rx.embedded import RedisServer
from flume_rx.runtime import WorkerRuntime
from flume_rx.store import RedisStore

QUEUE = "perkey"
RESULTS = Path(__file__).resolve().parent / "results" / "per_key_limits.json"

_starts: dict[str, list[float]] = defaultdict(list)
_lock = threading.Lock()


def tenant_of(tenant: str) -> str:
    """The ``key_from`` function: the job's only argument is its key."""
    return tenant


@worker("BenchKeyedJob")
async def _job(tenant: str) -> None:
    now = time.time()
    with _lock:
        _starts[tenant].append(now)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--jobs-per-key", type=int, default=10)
    parser.add_argument("--allowed", type=int, default=5, help="starts per key per second")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    calls = {"n": 0, "keys": 0}
    original = RedisStore.take_tokens_multi

    async def counted(self: RedisStore, key: str, wants: Any, **kwargs: Any) -> list[tuple[int, int, int]]:
        calls["n"] += 1
        calls["keys"] += len(wants)
        return await original(self, key, wants, **kwargs)

    RedisStore.take_tokens_multi = counted  # type: ignore[method-assign]
    jobs = args.keys * args.jobs_per_key
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        with Flume(server.url, "bench") as flume:
            order = [("BenchKeyedJob", [f"tenant-{i % args.keys}"]) for i in range(jobs)]
            for start in range(0, jobs, 5000):
                flume.bulk_enqueue(QUEUE, order[start : start + 5000])
        config = config_module.parse(
            {
                "redis_url": server.url,
                "namespace": "bench",
                "pipelines": {
                    "p": {
                        "queue": QUEUE,
                        "max_demand": 2000,
                        "processor": {"stages": 500},
                        "rate_limiter": {
                            "allowed": args.allowed,
                            "period": 1000,
                            "key": "tenants",
                            "key_from": f"{__name__}:tenant_of",
                        },
                    }
                },
            }
        )
        client.config_resetstat()
        began = time.perf_counter()
        asyncio.run(WorkerRuntime(config, burst=True).run())
        elapsed = time.perf_counter() - began
        stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
        commands = sum(int(v["calls"]) for v in stats.values())
        round_trips = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
        time.sleep(2.5)  # every window's keys expire a second after their last grant stops counting
        leftover = sum(1 for _ in client.scan_iter(match="{bench:rate:tenants}:k:*"))
    RedisStore.take_tokens_multi = original  # type: ignore[method-assign]

    worst = 0
    for times in _starts.values():
        times.sort()
        for i, at in enumerate(times):
            worst = max(worst, sum(1 for other in times[i:] if other < at + 1.0))
    started = sum(len(t) for t in _starts.values())
    result = {
        "benchmark": "per_key_limits",
        "keys": args.keys,
        "jobs": jobs,
        "started": started,
        "allowed_per_key_per_s": args.allowed,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(started / elapsed, 1),
        "token_calls": calls["n"],
        "token_calls_per_job": round(calls["n"] / max(1, started), 4),
        "keys_per_token_call": round(calls["keys"] / max(1, calls["n"]), 1),
        "lua_round_trips_per_job": round(round_trips / max(1, started), 4),
        "redis_commands_per_job": round(commands / max(1, started), 2),
        "most_starts_of_a_key_in_any_second": worst,
        "window_keys_left_after_quiet": leftover,
    }
    print(json.dumps(result, indent=2), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if started == jobs and worst <= args.allowed else 1


if __name__ == "__main__":
    sys.exit(main())
