"""Runs the scenarios for every peer that takes part and writes one JSON file of results.

Every worker runs as a real process (the peer's CLI or documented entry point) and is measured from outside:
jobs report to a separate probe Redis (see ``benchmarks.probe``), the runner polls it, samples the workers'
RSS with psutil and reads the Redis under test's INFO commandstats.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import redis

from benchmarks import probe, stats
from benchmarks.commands import MonitorCounter
from benchmarks.peers import PEERS, PeerModule, PeerSpec
from benchmarks.peers.flume import SHAPE_CONFIGS
from benchmarks.placement import placement_of
from benchmarks.redis_server import OWNER_KEY, given_database, private_redis, redacted
from flume_rx.store.scripts import lua_source
from flume_rx.surfaces.cpu_keeper import KEEPS_LOG, LEAVES_LOG

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCENARIOS = (
    "redis_ceiling",
    "enqueue",
    "throughput",
    "latency",
    "rate_limit",
    "memory",
    "slow_downstream",
    "batching",
    "shapes",
    "latency_sync",
)
LIMIT = 400
TAKE_TOKENS_SHA = hashlib.sha1(lua_source("take_tokens").encode("utf-8")).hexdigest()
"""flume_rx's limiter script as loaded (after its shared prelude): its EVALSHA calls are the limiter's calls."""
DEMO_JOB_MS = 5.0
"""The job of the demo-shaped limiter run: a sync call of a few ms, as the demo's SES call."""
LIMIT_PROCESSES = 3


@dataclass(slots=True)
class Settings:
    """Sizes of one run; ``quick`` trades precision for a run of under three minutes."""

    quick: bool
    reps: int
    jobs: int
    enqueue_jobs: int
    latency_rate: float = 500.0
    latency_s: float = 10.0
    limit_s: float = 10.0
    memory_jobs: int = 1_000_000
    memory_job_ms: float = 10.0
    slow_phase_s: float = 10.0
    batch_jobs: int = 50_000
    # x 4 shapes x 3 reps per peer and config, plus a MONITOR pass each. Drains of 5,000 lasted under half a
    # second for flume_rx, most of it its first thread-count trial: what a worker does in its first moments,
    # not what it does for the hours it runs.
    shape_jobs: int = 20_000
    shape_count_jobs: int = 2_000
    shape_latency_rate: float = 200.0
    drain_timeout_s: float = 300.0
    memory_peers: tuple[str, ...] = ("flume_rx",)
    slow_peers: tuple[str, ...] = ("flume_rx", "dramatiq", "arq", "celery")

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                quick=True,
                reps=1,
                jobs=1_500,
                enqueue_jobs=5_000,
                latency_s=2.0,
                limit_s=3.0,
                memory_jobs=50_000,
                slow_phase_s=2.5,
                batch_jobs=5_000,
                shape_jobs=2_000,
                shape_count_jobs=1_000,
                drain_timeout_s=60.0,
                slow_peers=("flume_rx", "dramatiq"),
            )
        return cls(quick=False, reps=3, jobs=20_000, enqueue_jobs=30_000)


class PeerFailed(Exception):
    """Raised when a peer cannot install, import, enqueue or drain; recorded, never fatal to the suite."""


@dataclass(slots=True)
class Bench:
    """The two private Redis servers of a run and its settings."""

    url: str
    probe_url: str
    settings: Settings
    log: Callable[[str], None] = print
    work_url: str = ""
    """The Redis the jobs of the ``incr`` shape talk to: neither the one under test nor the probe's."""
    client: redis.Redis = field(init=False)
    probe: redis.Redis = field(init=False)

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.url)
        self.probe = redis.Redis.from_url(self.probe_url)

    def reset(self) -> None:
        # FLUSHDB, not FLUSHALL: with --redis-url the server is the user's, and only this database is ours.
        for client in (self.client, self.probe):
            client.flushdb()
            client.set(OWNER_KEY, "1")
        if self.work_url:
            redis.Redis.from_url(self.work_url).flushdb()
        self.client.config_resetstat()

    # -- producing -----------------------------------------------------------------------------------
    def agent(
        self, spec: PeerSpec, *args: str, variant: str | None = None, timeout_s: float = 600.0
    ) -> dict[str, Any]:
        env = {**os.environ, "BENCH_REDIS_URL": self.url, "BENCH_PROBE_URL": self.probe_url}
        env["BENCH_VARIANT"] = spec.variant if variant is None else variant
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        try:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.agent", spec.name, *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise PeerFailed(f"producer {' '.join(args)} did not finish within {timeout_s:.0f} s") from None
        if done.returncode != 0:
            raise PeerFailed(f"producer {' '.join(args)} failed: {_tail(done.stderr)}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    # -- workers -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def workers(
        self, spec: PeerSpec, processes: int, *, variant: str | None = None, env: dict[str, str] | None = None
    ) -> Iterator[Workers]:
        module = adapter(spec)
        cmds = module.worker_commands(self.url, processes, spec.variant if variant is None else variant)
        full_env = {
            **os.environ,
            "BENCH_REDIS_URL": self.url,
            "BENCH_PROBE_URL": self.probe_url,
            "BENCH_WORK_URL": self.work_url,
            "BENCH_VARIANT": spec.variant if variant is None else variant,
            **(env or {}),
        }
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH", "")]))
        logs = Path(tempfile.mkdtemp(prefix=f"bench-{spec.name}-"))
        procs = []
        for i, cmd in enumerate(cmds):
            with open(logs / f"worker{i}.log", "wb") as out:
                procs.append(
                    subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
                )  # fmt: skip
        running = Workers(procs, logs, time.time())
        try:
            yield running
        finally:
            running.stop()

    def done(self) -> int:
        value: bytes | None = self.probe.get(probe.DONE_KEY)  # type: ignore[assignment]
        return int(value or 0)

    def wait_done(
        self,
        n: int,
        workers: Workers,
        *,
        timeout_s: float | None = None,
        every_s: float = 0.02,
        sample: Callable[[], None] | None = None,
        sample_every_s: float = 0.25,
    ) -> float:
        """Wait until ``n`` jobs reported done; returns the wall time it happened. Raises PeerFailed."""
        timeout_s = timeout_s or self.settings.drain_timeout_s
        deadline = time.time() + timeout_s
        next_sample = 0.0
        while True:
            now = time.time()
            if sample is not None and now >= next_sample:
                sample()
                next_sample = now + sample_every_s
            done = self.done()
            if done >= n:
                return now
            if now > deadline:
                raise PeerFailed(f"only {done} of {n} jobs done after {timeout_s:.0f} s; {workers.tail()}")
            if workers.all_exited() and self.done() < n:
                time.sleep(probe.FLUSH_INTERVAL_S * 3)
                if self.done() < n:
                    raise PeerFailed(f"workers exited with {self.done()} of {n} jobs done; {workers.tail()}")
            time.sleep(every_s)

    def done_times(self) -> tuple[float, float]:
        """First and last job completion over the run, from the probe's flush records."""
        firsts, lasts = [], []
        raw_records: list[bytes] = self.probe.lrange(probe.FLUSH_KEY, 0, -1)  # type: ignore[assignment]
        for raw in raw_records:
            _, first, last = raw.split()
            firsts.append(float(first))
            lasts.append(float(last))
        if not firsts:
            raise PeerFailed("no job reported done")
        return min(firsts), max(lasts)

    def floats(self, key: str) -> list[float]:
        time.sleep(probe.FLUSH_INTERVAL_S * 3)
        values: list[bytes] = self.probe.lrange(key, 0, -1)  # type: ignore[assignment]
        return sorted(float(v) for v in values)

    def server_urls(self) -> dict[str, str]:
        """The run's Redis servers by role: the one under test, the incr shape's and the probe."""
        return {"queue": self.url, "work": self.work_url, "probe": self.probe_url}

    def commands(self) -> int:
        info: dict[str, Any] = self.client.info("commandstats")  # type: ignore[assignment]
        return sum(int(v["calls"]) for v in info.values() if isinstance(v, dict))


@dataclass(slots=True)
class Workers:
    """The worker processes of one measurement, stopped (SIGTERM, then SIGKILL) on exit."""

    procs: list[subprocess.Popen[bytes]]
    logs: Path
    started: float

    def all_exited(self) -> bool:
        return all(p.poll() is not None for p in self.procs)

    def rss_bytes(self) -> int:
        """RSS of every worker process and all their children (pools fork)."""
        total = 0
        for p in self.procs:
            try:
                parent = psutil.Process(p.pid)
                total += parent.memory_info().rss
                total += sum(c.memory_info().rss for c in parent.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        return total

    def tail(self) -> str:
        texts = [_tail(f.read_text(errors="replace")) for f in sorted(self.logs.glob("*.log"))]
        return " | ".join(t for t in texts if t) or "no worker output"

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        # Measurements are over by now: a short grace, then SIGKILL (some peers drain for seconds on SIGTERM).
        deadline = time.time() + 2
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _tail(text: str, lines: int = 3) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def adapter(spec: PeerSpec) -> PeerModule:
    module: PeerModule = importlib.import_module(f"benchmarks.peers.{spec.module}")  # type: ignore[assignment, unused-ignore]
    return module


def _backlog(spec: PeerSpec, url: str) -> int:
    return adapter(spec).backlog(url)


# -- scenarios -------------------------------------------------------------------------------------------
CPU_PROBE_LOOPS = 300_000


def cpu_probe_ms() -> float:
    """How long a fixed piece of pure-Python work takes on this machine at this moment (ms, best of 3).

    flume_rx's drains are bound by CPU and the peers' more by round trips, so when this machine's CPU speed
    changes, flume_rx's rates move with it more than the peers' do (docs/performance.md, "Fifteenth round").
    Recorded beside each drain, it is a rough reading of that moment: a few ms of Python catch a busy moment
    more than the speed a whole drain meets ("Sixteenth round").
    """
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        total = 0
        for i in range(CPU_PROBE_LOOPS):
            total += i & 7
        best = min(best, time.perf_counter() - began)
    return best * 1000


def drain_once(
    bench: Bench,
    spec: PeerSpec,
    n: int,
    processes: int,
    *,
    variant: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Enqueue ``n`` jobs (no-ops unless ``env`` gives them a shape), start the workers, time until all are done."""
    probe_ms = cpu_probe_ms()
    bench.reset()
    bench.agent(spec, "bulk", str(n), variant=variant)
    calls_before = bench.commands()
    with bench.workers(spec, processes, variant=variant, env=env) as workers:
        # flume_rx's worker runs its jobs in the process started (a peer's may run them in children).
        placed = spec.name == "flume_rx" and processes == 1
        where = placement_of(bench.server_urls(), [p.pid for p in workers.procs]) if placed else None
        sample = where.sample if where is not None else None
        drained_at = bench.wait_done(n, workers, sample=sample, sample_every_s=PLACEMENT_EVERY_S)
        first, last = bench.done_times()
    calls = bench.commands() - calls_before
    return {
        "jobs": n,
        "loadavg_1m": os.getloadavg()[0],
        "cpu_probe_ms": probe_ms,
        "jobs_per_s": (n - 1) / (last - first) if last > first else None,
        "wall_s": drained_at - workers.started,
        "startup_s": first - workers.started,
        "redis_calls_per_job": calls / n,
        "cpu_keeper": keeper_decisions(workers.logs),
        **({"placement": where.summary()} if where is not None else {}),
    }


PLACEMENT_EVERY_S = 0.05
"""How often a one-process drain samples where its worker and Redis servers ran (see benchmarks.placement)."""


def keeper_decisions(logs: Path) -> list[str]:
    """What flume_rx's CPU keeper did in a drain (took a CPU, left one, and why), from its workers' logs: a
    drain's rate depends on it, so each sample keeps it."""
    return [
        found.group(0)
        for path in sorted(logs.glob("*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if (found := _KEEPER_LINE.search(line))
    ]


def _log_pattern(message: str) -> str:
    """A regular expression matching what ``message`` (a %-format of the keeper's) logs, whatever its values."""
    return ".*".join(re.escape(part) for part in re.split(r"%[sd]", message))


_KEEPER_LINE = re.compile("|".join(f"(?:{_log_pattern(m)})" for m in (KEEPS_LOG, LEAVES_LOG)))


def scenario_throughput(bench: Bench, spec: PeerSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Quick mode keeps the 2-process drain for flume_rx only, to stay under three minutes.
    counts = (1, 2) if not bench.settings.quick or spec.name == "flume_rx" else (1,)
    for processes in counts:
        if spec.name in ("celery-threads",) and processes > 1:
            continue
        n = max(100, int(bench.settings.jobs * spec.jobs_scale))
        samples = [drain_once(bench, spec, n, processes) for _ in range(bench.settings.reps)]
        out[f"processes_{processes}"] = {
            "samples": samples,
            "median_jobs_per_s": stats.median([s["jobs_per_s"] for s in samples if s["jobs_per_s"]]),
        }
    return out


def scenario_enqueue(bench: Bench, spec: PeerSpec) -> dict[str, Any]:
    samples = []
    for _ in range(bench.settings.reps):
        bench.reset()
        got = bench.agent(spec, "bulk", str(bench.settings.enqueue_jobs))
        samples.append({**got, "jobs_per_s": got["n"] / got["seconds"]})
    return {"samples": samples, "median_jobs_per_s": stats.median([s["jobs_per_s"] for s in samples])}


LATENCY_WARM_S = 2.0
"""Seconds of paced jobs each latency repetition runs, and leaves out, before the ones it measures."""


def scenario_latency(
    bench: Bench, spec: PeerSpec, *, rate: float | None = None, variant: str | None = None
) -> dict[str, Any]:
    samples = [
        _latency_sample(bench, spec, rate or bench.settings.latency_rate, variant)
        for _ in range(bench.settings.reps)
    ]
    return _latency_result(samples)


def _latency_sample(bench: Bench, spec: PeerSpec, rate: float, variant: str | None) -> dict[str, Any]:
    """One repetition: a fresh worker, warmed at the pace, then ``latency_s`` of paced jobs measured."""
    s = bench.settings
    bench.reset()
    with bench.workers(spec, 1, variant=variant, env={"BENCH_RECORD": "1"}) as workers:
        warmed = bench.agent(spec, "paced", str(rate), str(LATENCY_WARM_S), variant=variant)
        warm = int(warmed["n"])
        bench.wait_done(warm, workers)
        time.sleep(probe.FLUSH_INTERVAL_S * 3)
        bench.probe.delete(probe.WAITS_KEY, probe.STARTS_KEY)
        sent = bench.agent(spec, "paced", str(rate), str(s.latency_s), variant=variant)
        bench.wait_done(warm + int(sent["n"]), workers)
        waits = bench.floats(probe.WAITS_KEY)
    if not waits:
        raise PeerFailed("no job recorded its wait")
    return {
        "offered_per_s": rate,
        "producer_max_behind_s": sent["max_behind_s"],
        "jobs": len(waits),
        "p50_ms": stats.percentile(waits, 50) * 1000,
        "p99_ms": stats.percentile(waits, 99) * 1000,
        "max_ms": waits[-1] * 1000,
        # A thinned CDF for the notebook: every 1/200th of the sorted waits.
        "cdf_ms": [waits[min(len(waits) - 1, i * len(waits) // 200)] * 1000 for i in range(201)],
    }


def _latency_result(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "samples": samples,
        "median_p50_ms": stats.median([x["p50_ms"] for x in samples]),
        "median_p99_ms": stats.median([x["p99_ms"] for x in samples]),
        "median_max_ms": stats.median([x["max_ms"] for x in samples]),
    }


def scenario_rate_limit(bench: Bench, spec: PeerSpec) -> dict[str, Any]:
    result = _rate_limit(bench, spec, spec.scenario_variants.get("rate_limit"))
    if spec.name == "flume_rx":
        # The seed's 5 stages (the default max_demand, the same limiter), with a no-op job and with the
        # demo's: a sync call of a few ms, which 5 stages cannot start a grant's worth of within its hold.
        result["seed_stages"] = _rate_limit(bench, spec, "seed:async:limit")
        result["demo_shape"] = _rate_limit(bench, spec, "seed:sync:limit", job_ms=DEMO_JOB_MS)
    return result


def _rate_limit(bench: Bench, spec: PeerSpec, variant: str | None, job_ms: float = 0.0) -> dict[str, Any]:
    s = bench.settings
    n = int(LIMIT * s.limit_s)
    samples: list[dict[str, Any]] = []
    for _ in range(s.reps):
        bench.reset()
        bench.agent(spec, "bulk", str(n), variant=variant)
        calls_before = bench.commands()
        env = {"BENCH_RECORD": "1"}
        if job_ms:
            env["BENCH_DELAY_MS"] = str(job_ms)
        # MONITOR costs nothing that matters at 400 jobs/s; it tells the limiter's calls from the rest.
        counter = MonitorCounter(bench.url) if spec.name == "flume_rx" else None
        if counter is not None:
            counter.start()
        with bench.workers(spec, LIMIT_PROCESSES, variant=variant, env=env) as workers:
            # A limiter that starts far fewer than it allows is a result, not a failure: stop waiting after
            # twice the time the backlog needs at the limit, and measure what started.
            with contextlib.suppress(PeerFailed):
                bench.wait_done(n, workers, timeout_s=2 * s.limit_s + (2 if s.quick else 10))
            starts = bench.floats(probe.STARTS_KEY)
        limiter_calls = counter.stop().script_calls(TAKE_TOKENS_SHA) if counter is not None else None
        if len(starts) < 2:
            raise PeerFailed(f"only {len(starts)} jobs started; {workers.tail()}")
        calls = bench.commands() - calls_before
        rate = stats.mean_in_window(starts, 1.0)
        origin = starts[0] if starts else 0.0
        samples.append(
            {
                "jobs": n,
                "started": len(starts),
                "drained": len(starts) >= n,
                "max_starts_in_any_1s": stats.max_in_window(starts, 1.0),
                "achieved_per_s": rate,
                "steady_rate_first_to_last": stats.steady_rate(starts),
                "utilization": rate / LIMIT,
                "redis_calls_per_job": calls / n,
                "limiter_calls_per_job": None
                if limiter_calls is None
                else limiter_calls / max(1, len(starts)),
                "starts_per_100ms": stats.per_interval(starts, origin, 0.1),
            }
        )
    return {
        "limit_per_s": LIMIT,
        "processes": LIMIT_PROCESSES,
        "variant": variant,
        "job_ms": job_ms,
        "samples": samples,
        "median_max_starts_in_any_1s": stats.median([x["max_starts_in_any_1s"] for x in samples]),
        "median_utilization": stats.median([x["utilization"] for x in samples]),
        "median_redis_calls_per_job": stats.median([x["redis_calls_per_job"] for x in samples]),
        "median_limiter_calls_per_job": (
            stats.median([x["limiter_calls_per_job"] for x in samples])
            if all(x["limiter_calls_per_job"] is not None for x in samples)
            else None
        ),
    }


def scenario_memory(bench: Bench, spec: PeerSpec) -> dict[str, Any]:
    s = bench.settings
    n = s.memory_jobs
    bench.reset()
    bench.agent(spec, "bulk", str(n), timeout_s=1800)
    series: list[tuple[float, int, int]] = []
    env = {"BENCH_DELAY_MS": str(s.memory_job_ms)}
    with bench.workers(spec, 1, env=env) as workers:

        def sample() -> None:
            series.append((time.time() - workers.started, workers.rss_bytes(), bench.done()))

        timeout_s = max(s.drain_timeout_s, n * s.memory_job_ms / 1000)
        bench.wait_done(n, workers, timeout_s=timeout_s, sample=sample, sample_every_s=0.5)
        sample()
    # Growth counts from the first sample after the first job finished: imports and pools are set up by then.
    working = [rss for _, rss, done in series if done > 0] or [rss for _, rss, _ in series]
    return {
        "jobs": n,
        "job_ms": s.memory_job_ms,
        "series": [{"t_s": t, "rss_mb": rss / 2**20, "done": d} for t, rss, d in series],
        "rss_start_mb": working[0] / 2**20,
        "rss_max_mb": max(working) / 2**20,
        "rss_growth_mb": (max(working) - working[0]) / 2**20,
    }


def scenario_slow_downstream(bench: Bench, spec: PeerSpec) -> dict[str, Any]:
    s = bench.settings
    # Enough backlog that neither phase can drain it: flume_rx runs 200 stages (at most 40,000/s at 5 ms), the
    # peers at most 10 (2,000/s). A backlog that ran out during the first phase left nothing to measure in the
    # second, which then read as 0 jobs/s.
    per_s = 42_000 if spec.name == "flume_rx" else 2_500
    n = int(per_s * s.slow_phase_s * 1.2)
    bench.reset()
    bench.agent(spec, "bulk", str(n), timeout_s=1800)
    bench.probe.set(probe.DELAY_KEY, 5)
    module = adapter(spec)
    own_in_flight = getattr(module, "in_flight", None)
    series: list[dict[str, Any]] = []
    with bench.workers(spec, 1) as workers:

        def sample() -> None:
            done = bench.done()
            row: dict[str, Any] = {
                "t_s": time.time() - workers.started,
                "done": done,
                "in_flight": n - module.backlog(bench.url) - done,
                "rss_mb": workers.rss_bytes() / 2**20,
                "delay_ms": int(bench.probe.get(probe.DELAY_KEY) or 0),  # type: ignore[arg-type]
            }
            if own_in_flight is not None:
                row["in_flight_own_stats"] = own_in_flight(bench.url)
            series.append(row)

        end = time.time() + s.slow_phase_s
        while time.time() < end:
            sample()
            time.sleep(0.25)
        bench.probe.set(probe.DELAY_KEY, 200)
        end = time.time() + s.slow_phase_s
        while time.time() < end:
            sample()
            time.sleep(0.25)

    def phase_rate(delay: int) -> float | None:
        rows = [r for r in series if r["delay_ms"] == delay and r["done"] > 0]
        if len(rows) < 2 or rows[-1]["t_s"] <= rows[0]["t_s"]:
            return None
        return float((rows[-1]["done"] - rows[0]["done"]) / (rows[-1]["t_s"] - rows[0]["t_s"]))

    return {
        "series": series,
        "jobs_per_s_at_5ms": phase_rate(5),
        "jobs_per_s_at_200ms": phase_rate(200),
        "max_in_flight": max((r["in_flight"] for r in series), default=None),
        "rss_max_mb": max((r["rss_mb"] for r in series), default=None),
    }


def scenario_batching(bench: Bench, spec: PeerSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in (1, 10, 100):
        samples = [
            drain_once(bench, spec, bench.settings.batch_jobs, 1, variant=f"batch:{size}")
            for _ in range(bench.settings.reps)
        ]
        out[f"batch_{size}"] = {
            "samples": samples,
            "median_jobs_per_s": stats.median([x["jobs_per_s"] for x in samples if x["jobs_per_s"]]),
            "median_redis_calls_per_job": stats.median([x["redis_calls_per_job"] for x in samples]),
        }
    return out


def count_commands(
    bench: Bench, spec: PeerSpec, n: int, *, variant: str | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Drain ``n`` jobs under MONITOR: the clients' commands per job, and the scripts' own apart."""
    bench.reset()
    bench.agent(spec, "bulk", str(n), variant=variant)
    counter = MonitorCounter(bench.url)
    counter.start()
    try:
        with bench.workers(spec, 1, variant=variant, env=env) as workers:
            bench.wait_done(n, workers)
    finally:
        counted = counter.stop()
    return counted.as_dict(n)


def _shape_configs(spec: PeerSpec, kind: str) -> dict[str, str | None]:
    """The configurations a peer runs a shape in: flume_rx its defaults, the seed's and one CPU; a peer its own."""
    if spec.name != "flume_rx":
        return {"defaults": None}
    return {config: f"{config}:{kind}" for config in SHAPE_CONFIGS}  # the variants peers.flume reads


SHAPE_KINDS = {"noop": "sync", "incr": "sync", "sleep1": "sync", "await1": "async"}
"""Which flume_rx worker runs each shape: the issue's (a) and (c) are sync jobs, (b) an async one."""


PEER_ERRORS = (PeerFailed, redis.RedisError, OSError, ValueError, KeyError)
"""What fails one peer's scenario (recorded as its error) without stopping the suite."""


def shapes_interleaved(
    bench: Bench,
    specs: Sequence[PeerSpec],
    after_rep: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    *,
    latency_specs: Sequence[PeerSpec] = (),
) -> dict[str, dict[str, Any]]:
    """Jobs in the shapes users run, one process: throughput, Redis commands, and client commands per job;
    with ``latency_specs``, enqueue-to-start at 200 jobs/s too (``latency_sync``), in the same repetitions.

    Every peer of ``specs`` at once: a row is a shape in one configuration of one peer, and every repetition
    drains each row once, shape by shape and, within a shape, peer after peer, so the rows a ratio compares
    are measured minutes apart, three times over the run. Run peer after peer, all of a peer's reps at once,
    a row and the one it was compared with were up to forty minutes apart, and this machine's CPU speed
    changes within that (flume_rx, bound by CPU, moved with it more than the peers, which wait on round trips;
    docs/performance.md, "Fifteenth round"). Each repetition then takes one latency sample of every config of
    every peer of ``latency_specs``: run as a scenario of its own after the shapes, enqueue-to-start came from
    another hour than the throughput it is quoted beside, and the floor under it moved 0.09 to 0.53 ms
    between hours (docs/performance.md, "Sixteenth round"). The command counts (a MONITOR pass per row) come
    after the reps.

    Returns the entries by scenario (``shapes``, and ``latency_sync`` when asked) and peer, as :func:`run`
    records them: ``{"status": "ok", "result": ...}``, or ``{"status": "failed", "error": ...}`` for a peer
    whose drain or sample failed (its later rows of that scenario are skipped). ``after_rep`` gets the entries
    so far after each repetition, so a stopped run keeps what it measured.
    """
    s = bench.settings
    rows = [
        (shape, spec, config, variant, kind)
        for shape, kind in SHAPE_KINDS.items()
        for spec in specs
        for config, variant in _shape_configs(spec, kind).items()
    ]
    latency_rows = [
        (spec, config, variant)
        for spec in latency_specs
        for config, variant in _shape_configs(spec, "sync").items()
    ]
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    waits: dict[tuple[str, str], list[dict[str, Any]]] = {}
    failed: dict[tuple[str, str], str] = {}  # (scenario, peer) -> error
    seconds: dict[tuple[str, str], float] = {}

    def attempt(
        scenario: str, spec: PeerSpec, measure: Callable[[], dict[str, Any]]
    ) -> dict[str, Any] | None:
        if (scenario, spec.name) in failed:
            return None
        began = time.time()
        try:
            return measure()
        except PEER_ERRORS as exc:
            failed[(scenario, spec.name)] = f"{type(exc).__name__}: {exc}"
            return None
        finally:
            seconds[(scenario, spec.name)] = seconds.get((scenario, spec.name), 0.0) + time.time() - began

    def shape_result(spec: PeerSpec, counted: dict[tuple[str, str], dict[str, Any]] | None) -> dict[str, Any]:
        return {
            f"{shape}/{config}": _shape_row(
                spec,
                shape,
                config,
                kind,
                samples.get((spec.name, f"{shape}/{config}"), []),
                None if counted is None else counted[(spec.name, f"{shape}/{config}")],
            )
            for shape, row_spec, config, _variant, kind in rows
            if row_spec is spec
        }

    def latency_result(spec: PeerSpec) -> dict[str, Any]:
        return {
            config: _latency_result(waits[(spec.name, config)])
            for row_spec, config, _variant in latency_rows
            if row_spec is spec and (spec.name, config) in waits
        }

    def entry(scenario: str, spec: PeerSpec, result: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        error = failed.get((scenario, spec.name))
        out = {"status": "failed", "error": error} if error else {"status": "ok", "result": result()}
        out["seconds"] = round(seconds.get((scenario, spec.name), 0.0), 1)
        return out

    def entries(counted: dict[tuple[str, str], dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
        out = {
            "shapes": {
                spec.name: entry("shapes", spec, functools.partial(shape_result, spec, counted))
                for spec in specs
            }
        }
        if latency_specs:
            out["latency_sync"] = {
                spec.name: entry("latency_sync", spec, functools.partial(latency_result, spec))
                for spec in latency_specs
            }
        return out

    for rep in range(s.reps):
        for shape, spec, config, variant, _kind in rows:
            n = max(100, int(s.shape_jobs * spec.jobs_scale))
            env = {"BENCH_SHAPE": shape}
            drain = functools.partial(drain_once, bench, spec, n, 1, variant=variant, env=env)
            sample = attempt("shapes", spec, drain)
            if sample is not None:
                samples.setdefault((spec.name, f"{shape}/{config}"), []).append(sample)
        for spec, config, variant in latency_rows:
            paced = functools.partial(_latency_sample, bench, spec, s.shape_latency_rate, variant)
            sample = attempt("latency_sync", spec, paced)
            if sample is not None:
                waits.setdefault((spec.name, config), []).append(sample)
        bench.log(f"    rep {rep + 1} of {s.reps} done")
        if after_rep is not None:
            after_rep(entries(None))
    counted: dict[tuple[str, str], dict[str, Any]] = {}
    for shape, spec, config, variant, _kind in rows:
        n = max(100, int(s.shape_count_jobs * spec.jobs_scale))
        env = {"BENCH_SHAPE": shape}
        count = functools.partial(count_commands, bench, spec, n, variant=variant, env=env)
        counted[(spec.name, f"{shape}/{config}")] = attempt("shapes", spec, count) or {}
    return entries(counted)


def _shape_row(
    spec: PeerSpec,
    shape: str,
    config: str,
    kind: str,
    samples: list[dict[str, Any]],
    commands: dict[str, Any] | None,
) -> dict[str, Any]:
    rates = [x["jobs_per_s"] for x in samples if x["jobs_per_s"]]
    row: dict[str, Any] = {
        "shape": shape,
        "config": config,
        "worker_kind": kind if spec.name == "flume_rx" else spec.variant or "default",
        "samples": samples,
        "median_jobs_per_s": stats.median(rates),
        "median_redis_calls_per_job": stats.median([x["redis_calls_per_job"] for x in samples]),
    }
    if commands is not None:
        row["commands"] = commands
    return row


def scenario_latency_sync(bench: Bench, spec: PeerSpec) -> dict[str, Any]:
    """Enqueue-to-start at a steady 200 jobs/s, for flume_rx with a sync worker (defaults, the seed's, one CPU)."""
    configs = _shape_configs(spec, "sync")
    samples: dict[str, list[dict[str, Any]]] = {config: [] for config in configs}
    # The configs alternate rep by rep: the first reps of a run came out about 0.1 ms slower than the later
    # ones, whichever config ran first (found by swapping them), and a warm-up at the pace did not remove it.
    for _ in range(bench.settings.reps):
        for config, variant in configs.items():
            samples[config].append(_latency_sample(bench, spec, bench.settings.shape_latency_rate, variant))
    return {config: _latency_result(config_samples) for config, config_samples in samples.items()}


def redis_ceiling(bench: Bench, quick: bool) -> dict[str, Any]:
    """redis-benchmark for the commands flume_rx's hot path uses, unpipelined and pipelined by 16."""
    bench.reset()
    conn = bench.client.connection_pool.connection_kwargs
    host, port = str(conn.get("host", "127.0.0.1")), str(conn.get("port"))
    target = ["-h", host, "-p", port, "--dbnum", str(conn.get("db", 0))]
    if conn.get("username"):
        target += ["--user", str(conn["username"])]
    if conn.get("password"):
        target += ["-a", str(conn["password"])]
    bench.client.rpush("bench:rot", *range(1000))
    sha = str(bench.client.script_load("return redis.call('LLEN', KEYS[1])"))
    tests: dict[str, list[str]] = {
        "LPUSH": ["lpush", "bench:l", "x"],
        "RPOPLPUSH": ["rpoplpush", "bench:rot", "bench:rot"],
        "LMOVE": ["lmove", "bench:rot", "bench:rot", "RIGHT", "LEFT"],
        "EVALSHA": ["evalsha", sha, "1", "bench:rot"],
        "ZADD": ["zadd", "bench:z", "__rand_int__", "m:__rand_int__"],
    }
    requests = 50_000 if quick else 300_000
    out: dict[str, Any] = {}
    for pipeline in (1, 16):
        for name, cmd in tests.items():
            done = subprocess.run(
                ["redis-benchmark", *target, "-n", str(requests), "-P", str(pipeline),
                 "-r", "100000", "-q", "--csv", *cmd],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            rps = None
            for line in done.stdout.splitlines():
                cells = [c.strip('"') for c in line.split(",")]
                if len(cells) >= 2 and cells[0] != "test":
                    with contextlib.suppress(ValueError):
                        rps = float(cells[1])
            out[f"{name}_P{pipeline}"] = {"ops_per_s": rps, "command": " ".join(cmd)}
    return {"clients": 50, "requests": requests, "results": out}


# Measured one peer after another; `shapes` measures every peer at once (shapes_interleaved).
SCENARIO_FUNCS: dict[str, Callable[[Bench, PeerSpec], dict[str, Any]]] = {
    "throughput": scenario_throughput,
    "enqueue": scenario_enqueue,
    "latency": scenario_latency,
    "rate_limit": scenario_rate_limit,
    "memory": scenario_memory,
    "slow_downstream": scenario_slow_downstream,
    "batching": scenario_batching,
    "latency_sync": scenario_latency_sync,
}


# -- the run ---------------------------------------------------------------------------------------------
def machine_info(url: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    server: dict[str, Any] = redis.Redis.from_url(url).info("server")  # type: ignore[assignment]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_server": server.get("redis_version"),
    }


def package_versions() -> dict[str, str]:
    names = {"redis", "hiredis", "reactivex", "msgpack", "psutil"}
    for spec in PEERS:
        names.update(spec.dists)
    out = {}
    for name in sorted(names):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The ratios the project quotes: flume_rx / best peer and flume_rx / Redis ceiling."""
    summary: dict[str, Any] = {}
    tp = results["scenarios"].get("throughput", {})

    def rate(name: str, key: str = "processes_1") -> float | None:
        entry = tp.get(name, {})
        if entry.get("status") != "ok":
            return None
        value = entry["result"].get(key, {}).get("median_jobs_per_s")
        return float(value) if value else None

    peers = {name: rate(name) for name in tp if name != "flume_rx"}
    ranked = sorted(((v, k) for k, v in peers.items() if v), reverse=True)
    summary["throughput_1_process_jobs_per_s"] = {k: v for k, v in peers.items()} | {
        "flume_rx": rate("flume_rx")
    }
    if ranked:
        summary["best_peer"] = {"name": ranked[0][1], "jobs_per_s": ranked[0][0]}
    flume = rate("flume_rx")
    if flume and ranked:
        summary["flume_vs_best_peer"] = flume / ranked[0][0]
    ceiling = results["scenarios"].get("redis_ceiling", {})
    if flume and ceiling.get("status") == "ok":
        summary["flume_vs_redis_ceiling"] = {
            name: flume / r["ops_per_s"] for name, r in ceiling["result"]["results"].items() if r["ops_per_s"]
        }
    return summary


def run(
    *,
    quick: bool,
    only: Sequence[str] = (),
    peers: Sequence[str] = (),
    out: Path | None = None,
    jobs: int | None = None,
    shape_jobs: int | None = None,
    reps: int | None = None,
    redis_url: str | None = None,
    probe_url: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the suite and write its JSON; returns the file's path.

    Args:
        redis_url: the Redis under test, one the user runs (an empty database of it; see `given_database`);
            default a private redis-server started for the run.
        probe_url: where jobs record their starts (a second database); default a private redis-server.
    """
    settings = Settings.for_mode(quick)
    if jobs:
        settings.jobs = jobs
    if shape_jobs:
        settings.shape_jobs = shape_jobs
    if reps:
        settings.reps = reps
    wanted = [s for s in SCENARIOS if not only or s in only]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}; pick from {', '.join(SCENARIOS)}")
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": quick}
    path = out or RESULTS_DIR / f"{'quick' if quick else 'full'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    began = time.time()
    results["redis"] = {
        "under_test": "given" if redis_url else "private",
        "probe": "given" if probe_url else "private",
    }
    with (
        _database(redis_url, "the Redis under test") as url,
        _database(probe_url, "the probe") as probe_url,
        private_redis() as work_url,  # the incr shape's jobs talk to it: always a private one
    ):
        if url == probe_url:
            raise SystemExit(
                "--probe-url must name another database than --redis-url (the suite flushes both)"
            )
        log(f"Redis under test: {redacted(url)}; probe: {redacted(probe_url)}")
        bench = Bench(url, probe_url, settings, log, work_url)
        results["machine"] = machine_info(url)
        results["versions"] = package_versions()
        results["configuration"] = {
            "settings": dataclasses.asdict(settings),
            "peers": {p.name: {"variant": p.variant, **p.config} for p in PEERS},
        }
        results["scenarios"] = {}
        checked: dict[str, str | None] = {}

        def keep(scenario: str, so_far: dict[str, Any]) -> None:
            # What is measured so far is kept: a run stopped in its last hour loses one peer, not all.
            results["scenarios"][scenario].update(so_far)
            _write(path, results, partial=True)

        def keep_each(so_far: dict[str, dict[str, Any]]) -> None:
            for scenario, entries in so_far.items():
                keep(scenario, entries)

        def ready_for(scenario: str) -> tuple[dict[str, Any], list[PeerSpec]]:
            """The peers that run ``scenario``: those that answered their check, and the entries of those that
            did not (recorded as failed)."""
            refused: dict[str, Any] = {}
            ready: list[PeerSpec] = []
            for spec in PEERS:
                if scenario not in spec.scenarios or (peers and spec.name not in peers):
                    continue
                if scenario == "memory" and spec.name not in settings.memory_peers and not peers:
                    continue
                if scenario == "slow_downstream" and spec.name not in settings.slow_peers and not peers:
                    continue
                if spec.name not in checked:
                    try:
                        bench.agent(spec, "check", timeout_s=120)
                        checked[spec.name] = None
                    except PeerFailed as exc:
                        checked[spec.name] = str(exc)
                if checked[spec.name] is not None:
                    refused[spec.name] = {"status": "failed", "error": checked[spec.name]}
                    continue
                ready.append(spec)
            return refused, ready

        def in_peer_order(per_peer: dict[str, Any]) -> dict[str, Any]:
            return {spec.name: per_peer[spec.name] for spec in PEERS if spec.name in per_peer}

        for scenario in wanted:
            if scenario == "redis_ceiling":
                log("redis_ceiling ...")
                try:
                    results["scenarios"][scenario] = {"status": "ok", "result": redis_ceiling(bench, quick)}
                except (OSError, subprocess.SubprocessError) as exc:
                    results["scenarios"][scenario] = {"status": "failed", "error": str(exc)}
                continue
            if scenario == "latency_sync" and "shapes" in wanted:
                continue  # measured in the shapes' repetitions, below
            if scenario == "shapes":
                # Every peer's rows rep by rep, not peer after peer, and enqueue-to-start in the same
                # repetitions when asked: see shapes_interleaved.
                together = ["shapes", *(["latency_sync"] if "latency_sync" in wanted else [])]
                refused: dict[str, dict[str, Any]] = {}
                ready: dict[str, list[PeerSpec]] = {}
                for name in together:
                    refused[name], ready[name] = ready_for(name)
                    results["scenarios"][name] = dict(refused[name])
                log(
                    f"{' and '.join(together)} / {', '.join(spec.name for spec in ready['shapes'])}, rep by rep ..."
                )
                measured = shapes_interleaved(
                    bench, ready["shapes"], keep_each, latency_specs=ready.get("latency_sync", ())
                )
                for name in together:
                    per_peer = {**refused[name], **measured.get(name, {})}
                    for peer, entry in per_peer.items():
                        log(f"    {name} / {peer}: {_brief(name, entry)}")
                    results["scenarios"][name] = in_peer_order(per_peer)
                continue
            refused_peers, ready_peers = ready_for(scenario)
            results["scenarios"][scenario] = dict(refused_peers)
            per_peer = dict(refused_peers)
            per_peer.update(_peer_after_peer(bench, scenario, ready_peers, functools.partial(keep, scenario)))
            results["scenarios"][scenario] = in_peer_order(per_peer)
    results["seconds"] = round(time.time() - began, 1)
    results["summary"] = summarize(results)
    _write(path, results, partial=False)
    log(f"wrote {path} in {results['seconds']} s")
    return path


def _peer_after_peer(
    bench: Bench, scenario: str, specs: Sequence[PeerSpec], after_peer: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """The scenario's entry per peer, all of one peer's runs before the next's; ``after_peer`` gets each."""
    per_peer: dict[str, Any] = {}
    for spec in specs:
        bench.log(f"{scenario} / {spec.name} ...")
        began = time.time()
        try:
            entry = {"status": "ok", "result": SCENARIO_FUNCS[scenario](bench, spec)}
        except PEER_ERRORS as exc:
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        entry["seconds"] = round(time.time() - began, 1)
        bench.log(f"    {_brief(scenario, entry)}")
        per_peer[spec.name] = entry
        after_peer({spec.name: entry})
    return per_peer


def _write(path: Path, results: dict[str, Any], *, partial: bool) -> None:
    """The results so far (``partial``, with no summary yet) or in full, replacing the file at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(path.name + ".part")
    staged.write_text(json.dumps({**results, "partial": partial}, indent=1, default=str) + "\n")
    staged.replace(path)


@contextlib.contextmanager
def _database(url: str | None, role: str) -> Iterator[str]:
    """The given database (checked and flushed by `given_database`), else a private redis-server."""
    if url:
        try:
            with given_database(url) as taken:
                yield taken
        except (RuntimeError, redis.RedisError) as exc:
            raise SystemExit(f"{role}: {exc}") from None
        return
    with contextlib.ExitStack() as stack:
        try:
            taken = stack.enter_context(private_redis())
        except FileNotFoundError as exc:
            raise SystemExit(
                f"{role} is a private redis-server by default, and none can start ({exc}); or pass a URL "
                "(--redis-url, --probe-url: an empty database each)"
            ) from None
        yield taken


def _brief(scenario: str, entry: dict[str, Any]) -> str:
    if entry["status"] != "ok":
        return f"FAILED: {entry['error'][:300]}"
    r = entry["result"]
    if scenario == "throughput":
        return ", ".join(f"{k}: {v['median_jobs_per_s'] or 0:,.0f} jobs/s" for k, v in r.items())
    if scenario == "enqueue":
        return f"{r['median_jobs_per_s']:,.0f} jobs/s"
    if scenario == "latency":
        return f"p50 {r['median_p50_ms']:.2f}, p99 {r['median_p99_ms']:.2f}, max {r['median_max_ms']:.1f} ms"
    if scenario == "rate_limit":
        text = (
            f"max/1s {r['median_max_starts_in_any_1s']}, utilization {r['median_utilization']:.1%}, "
            f"{r['median_redis_calls_per_job']:.2f} calls/job"
        )
        for key, label in (
            ("seed_stages", "5 stages"),
            ("demo_shape", f"5 stages, {DEMO_JOB_MS:g} ms sync job"),
        ):
            shape = r.get(key)
            if shape:
                text += (
                    f"; {label}: max/1s {shape['median_max_starts_in_any_1s']}, utilization "
                    f"{shape['median_utilization']:.1%}, {shape['median_limiter_calls_per_job']:.3f} "
                    "limiter calls/job"
                )
        return text
    if scenario == "memory":
        return f"RSS {r['rss_start_mb']:.0f} -> max {r['rss_max_mb']:.0f} MB (+{r['rss_growth_mb']:.1f} MB)"
    if scenario == "slow_downstream":
        return (
            f"{r['jobs_per_s_at_5ms'] or 0:,.0f} -> {r['jobs_per_s_at_200ms'] or 0:,.0f} jobs/s, "
            f"max in flight {r['max_in_flight']}, max RSS {r['rss_max_mb']:.0f} MB"
        )
    if scenario == "shapes":
        return ", ".join(
            f"{k}: {v['median_jobs_per_s'] or 0:,.0f} jobs/s "
            f"{v['commands']['client_commands_per_job'] or 0:.3f} client cmds/job"
            for k, v in r.items()
        )
    if scenario == "latency_sync":
        return ", ".join(
            f"{k}: p50 {v['median_p50_ms']:.2f}, p99 {v['median_p99_ms']:.2f} ms" for k, v in r.items()
        )
    if scenario == "batching":
        return ", ".join(
            f"{k}: {v['median_jobs_per_s'] or 0:,.0f} jobs/s {v['median_redis_calls_per_job']:.2f} calls/job"
            for k, v in r.items()
        )
    return "ok"


def _exit_on_term(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("run", help="run the suite and write one JSON file to benchmarks/results/")
    cmd.add_argument("--quick", action="store_true", help="small job counts, one repetition (< 3 min)")
    cmd.add_argument("--only", action="append", default=[], metavar="NAME",
                     help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")  # fmt: skip
    cmd.add_argument(
        "--peer", action="append", default=[], metavar="NAME", help="run only this peer (repeatable)"
    )
    cmd.add_argument("--out", type=Path, help="where to write the JSON")
    cmd.add_argument(
        "--redis-url",
        default=os.environ.get("FLUME_BENCH_REDIS_URL") or None,
        metavar="URL",
        help="benchmark this Redis (an empty database of it, which the suite flushes; env FLUME_BENCH_REDIS_URL) "
        "instead of a private redis-server",
    )
    cmd.add_argument(
        "--probe-url",
        default=os.environ.get("FLUME_BENCH_PROBE_URL") or None,
        metavar="URL",
        help="where jobs record their starts: another empty database (env FLUME_BENCH_PROBE_URL); "
        "default a private redis-server",
    )
    cmd.add_argument("--jobs", type=int, help="jobs per throughput drain (overrides the mode's default)")
    cmd.add_argument("--shape-jobs", type=int, help="jobs per shapes drain (overrides the mode's default)")
    cmd.add_argument("--reps", type=int, help="repetitions (overrides the mode's default)")
    table = sub.add_parser("table", help="print a results JSON as the Markdown tables the README quotes")
    table.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "table":
        from benchmarks.report import tables

        print(tables(json.loads(args.path.read_text())), end="")
        return 0
    only = [name for item in args.only for name in item.split(",")]
    peers = [name for item in args.peer for name in item.split(",")]
    # A run stopped with SIGTERM (kill, a CI timeout) unwinds as Ctrl-C does: the workers and the private
    # redis-servers it started are stopped by their context managers, instead of outliving it.
    signal.signal(signal.SIGTERM, _exit_on_term)
    run(
        quick=args.quick,
        only=only,
        peers=peers,
        out=args.out,
        jobs=args.jobs,
        shape_jobs=args.shape_jobs,
        reps=args.reps,
        redis_url=args.redis_url,
        probe_url=args.probe_url,
    )
    return 0
