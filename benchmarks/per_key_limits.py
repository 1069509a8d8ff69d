"""Per-key rate limits with 1,000 keys: Redis calls per job, throughput, and that no key went over its limit.

``python -m benchmarks.per_key_limits [--quick] [--keys 1000] [--jobs-per-key 10] [--allowed 5] [--reps 5]
[--out PATH]`` starts a private redis-server, enqueues jobs spread round-robin over the keys, drains them with a
worker runtime in burst mode inside this process, whose pipeline limits each key to ``allowed`` starts per
second (``rate_limiter.key_from``), and writes JSON to ``benchmarks/results/per_key_limits.json``: token calls
(one Redis round trip each, however many keys it serves) per job, keys per call, all Redis commands per job,
jobs per second, the most starts any key had in any one-second window (it must not exceed ``allowed``), the
window keys still in Redis once the keys have been quiet for longer than a window, and the least time any key
took for ``allowed + 1`` starts (at least a second if the limit held). Starts are timed twice: at the
hand-off (the pipeline's ``job.started`` event, where the window's bound applies) and where the job begins,
in the worker; the largest gap between the two, per key in start order, is reported too. The
top-level figures are medians over the repetitions, except the bounds (most starts and keys left: the largest;
the shortest span: the least); every repetition's raw figures are kept under ``samples``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks import stats
from benchmarks.runner import machine_info
from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.model.telemetry import Event, Telemetry
from flume_rx.store import RedisStore
from flume_rx.surfaces.embedded import RedisServer
from flume_rx.surfaces.runtime import WorkerRuntime

QUEUE = "perkey"
RESULTS = Path(__file__).resolve().parent / "results" / "per_key_limits.json"
# Five by default: on a shared machine one run's drain time varies up to 2x and its token calls several-fold.
FULL_REPS, QUICK_REPS = 5, 1
# Figures that vary from run to run (medians), and the bounds the limit promises (the worst run counts).
MEDIANS = (
    "seconds",
    "jobs_per_s",
    "token_calls",
    "token_calls_per_job",
    "keys_per_token_call",
    "lua_round_trips_per_job",
    "redis_commands_per_job",
)
BOUNDS = (
    "most_starts_of_a_key_in_any_second",
    "most_handoffs_of_a_key_in_any_second",
    "largest_handoff_to_start_ms",
    "window_keys_left_after_quiet",
)
SPAN = "shortest_span_of_allowed_plus_1_starts_s"

_starts: dict[str, list[float]] = defaultdict(list)
_handoffs: dict[str, list[float]] = defaultdict(list)
_lock = threading.Lock()


def tenant_of(tenant: str) -> str:
    """The ``key_from`` function: the job's only argument is its key."""
    return tenant


@worker("BenchKeyedJob")
async def _job(tenant: str) -> None:
    now = time.time()
    with _lock:
        _starts[tenant].append(now)


@dataclass
class TokenCalls:
    """Counts ``take_tokens_multi`` calls and the keys they carry, by wrapping the store's method."""

    calls: int = 0
    keys: int = 0

    def install(self) -> Callable[[], None]:
        original = RedisStore.take_tokens_multi

        async def counted(
            store: RedisStore, key: str, wants: Any, **kwargs: Any
        ) -> list[tuple[int, int, int]]:
            self.calls += 1
            self.keys += len(wants)
            return await original(store, key, wants, **kwargs)

        RedisStore.take_tokens_multi = counted  # type: ignore[method-assign, assignment]

        def uninstall() -> None:
            RedisStore.take_tokens_multi = original  # type: ignore[method-assign]

        return uninstall


def _config(url: str, allowed: int) -> config_module.FlumeConfig:
    return config_module.parse(
        {
            "redis_url": url,
            "namespace": "bench",
            "pipelines": {
                "p": {
                    "queue": QUEUE,
                    "max_demand": 2000,
                    "processor": {"stages": 500},
                    "rate_limiter": {
                        "allowed": allowed,
                        "period": 1000,
                        "key": "tenants",
                        "key_from": f"{__name__}:tenant_of",
                    },
                }
            },
        }
    )


def most_in_any_second(starts: dict[str, list[float]]) -> int:
    return max((stats.max_in_window(sorted(times), 1.0) for times in starts.values()), default=0)


def shortest_span(starts: dict[str, list[float]], count: int) -> float | None:
    """The least time any key took for ``count`` consecutive starts (None if no key had that many).

    With ``count = allowed + 1`` this must be at least the period; how far below it says by how much a count
    over ``allowed`` went over, which the integer count alone hides.
    """
    spans = [
        ordered[i + count - 1] - ordered[i]
        for ordered in (sorted(times) for times in starts.values())
        for i in range(len(ordered) - count + 1)
    ]
    return round(min(spans), 4) if spans else None


def largest_lag_ms(handoffs: dict[str, list[float]], starts: dict[str, list[float]]) -> float:
    """The largest gap from a hand-off to the start it became, matching each key's hand-offs and starts in order."""
    gaps = [
        start - handoff
        for key, times in starts.items()
        for handoff, start in zip(sorted(handoffs.get(key, [])), sorted(times), strict=False)
    ]
    return round(max(gaps, default=0.0) * 1000, 1)


def _measure(url: str, keys: int, jobs_per_key: int, allowed: int, counter: TokenCalls) -> dict[str, Any]:
    """One drain of ``keys * jobs_per_key`` jobs; wall time includes the runtime's start-up."""
    client = redis.Redis.from_url(url)
    client.flushall()
    jobs = keys * jobs_per_key
    with Flume(url, "bench") as flume:
        order = [("BenchKeyedJob", [f"tenant-{i % keys}"]) for i in range(jobs)]
        key_of_job: dict[str, str] = {}
        for start in range(0, jobs, 5000):
            chunk = order[start : start + 5000]
            ids = flume.bulk_enqueue(QUEUE, chunk)
            key_of_job.update({job_id: args[0] for job_id, (_, args) in zip(ids, chunk, strict=True)})
    _starts.clear()
    _handoffs.clear()
    telemetry = Telemetry()

    def on_handoff(event: Event) -> None:
        _handoffs[key_of_job[event.fields["job_id"]]].append(event.time)

    telemetry.attach("job.started", on_handoff)
    counter.calls = counter.keys = 0
    client.config_resetstat()
    began = time.perf_counter()
    asyncio.run(WorkerRuntime(_config(url, allowed), telemetry=telemetry, burst=True).run())
    elapsed = time.perf_counter() - began
    commandstats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    commands = sum(int(v["calls"]) for v in commandstats.values())
    round_trips = int(commandstats.get("cmdstat_evalsha", {}).get("calls", 0))
    time.sleep(2.5)  # every window's keys expire a second after their last grant stops counting
    leftover = sum(1 for _ in client.scan_iter(match="{bench:rate:tenants}:k:*"))
    started = sum(len(t) for t in _starts.values())
    return {
        "started": started,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(started / elapsed, 1),
        "token_calls": counter.calls,
        "token_calls_per_job": round(counter.calls / max(1, started), 4),
        "keys_per_token_call": round(counter.keys / max(1, counter.calls), 1),
        "lua_round_trips_per_job": round(round_trips / max(1, started), 4),
        "redis_commands_per_job": round(commands / max(1, started), 2),
        "most_starts_of_a_key_in_any_second": most_in_any_second(_starts),
        "most_handoffs_of_a_key_in_any_second": most_in_any_second(_handoffs),
        "largest_handoff_to_start_ms": largest_lag_ms(_handoffs, _starts),
        "shortest_span_of_allowed_plus_1_starts_s": shortest_span(_starts, allowed + 1),
        "window_keys_left_after_quiet": leftover,
    }


def summarize(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "started": min(s["started"] for s in samples),
        **{key: stats.median([s[key] for s in samples]) for key in MEDIANS},
        **{key: max(s[key] for s in samples) for key in BOUNDS},
        "shortest_span_of_allowed_plus_1_starts_s": min(
            (s[SPAN] for s in samples if s[SPAN] is not None), default=None
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPS} repetition, same sizes")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys (default %(default)s)")
    parser.add_argument("--jobs-per-key", type=int, default=10, help="jobs of each key (default %(default)s)")
    parser.add_argument(
        "--allowed", type=int, default=5, help="starts per key per second (default %(default)s)"
    )
    parser.add_argument("--reps", type=int, help=f"repetitions (default {FULL_REPS}; --quick {QUICK_REPS})")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON to write (default %(default)s)")
    args = parser.parse_args(argv)
    reps = args.reps or (QUICK_REPS if args.quick else FULL_REPS)
    jobs = args.keys * args.jobs_per_key
    counter = TokenCalls()
    samples = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # The machine is shared: the load around the run says how far its jobs/s can be trusted.
    load_before = os.getloadavg()
    uninstall = counter.install()
    try:
        with RedisServer() as server:
            machine = machine_info(server.url)
            for rep in range(reps):
                sample = _measure(server.url, args.keys, args.jobs_per_key, args.allowed, counter)
                samples.append(sample)
                print(json.dumps({"rep": rep + 1, **sample}), file=sys.stderr)
    finally:
        uninstall()
    result = {
        "benchmark": "per_key_limits",
        "run_started": started,
        "machine": machine,
        "load_average_1_5_15m": {"before": load_before, "after": os.getloadavg()},
        "reps": reps,
        "keys": args.keys,
        "jobs": jobs,
        "allowed_per_key_per_s": args.allowed,
        **summarize(samples),
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    met = result["started"] == jobs and result["most_handoffs_of_a_key_in_any_second"] <= args.allowed
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
