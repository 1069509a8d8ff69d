"""Where one job's enqueue-to-start goes, step by step, with a sync worker at a steady rate.

``python -m benchmarks.latency_path [--rate 200] [--seconds 10] [--stages 5] [--variant NAME ...]``

One private Redis, one worker process (``run_worker_process``, as ``flume-rx worker`` runs it) with a sync
worker, and a producer here calling ``Flume.enqueue`` at a steady rate, one job per call carrying
``time.time()``. The worker process wraps a few of the engine's functions to stamp each job on its way
(``time.time()``, one host clock for both processes); nothing is sent anywhere while it runs:

- ``pushed``: the producer wrote its command to Redis (what comes before is ``enqueue``'s own Python);
- ``sent``: the producer's ``enqueue`` returned;
- ``woke``: the worker's loop came out of its wait with an event, the last time before the reply was read
  (counted from ``pushed``);
- ``reply``: the fetch's reply is parsed (redis-py), ``decoded``: its jobs are decoded;
- ``handed``: the job is put on the stage threads' queue; ``taken``: a thread took it; ``first``: the job's
  first line.

Also noted: when the loop first waits on anything after a hand-off (``loop_waits``), and how often the thread
took the job only after that wait (the woken thread wants the interpreter lock the loop holds).

Each variant runs in its own worker process, the variants alternated for ``--rounds`` rounds, so a loaded
machine weighs on them alike: ``base`` (the engine as it is), or ``NAME=VALUE,...`` environment variables for
the worker: ``TRACE_WAKE_SWITCH_S`` (``engine.threads.WAKE_SWITCH_INTERVAL_S``; 0 turns it off),
``TRACE_SWITCH_S`` (the process's switch interval for good), ``TRACE_WAKE_YIELD=0`` (no yield of the
interpreter lock after waking an idle thread, ``engine.threads.YIELD_ON_WAKE``), ``TRACE_TREE=<checkout>``
(the worker process from another checkout, a worktree of an older commit: the producer stays this one). Prints
the medians and percentiles of each step, and writes them as JSON (``--out``). On a loaded shared machine, run
it under ``chrt -f 1`` (every process it starts inherits the real-time priority), so the other processes' queue
stays out of its wake-ups.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import redis.connection

from benchmarks.redis_server import LocalRedis
from flume_rx import Flume, worker
from flume_rx.engine import loop as engine_loop
from flume_rx.engine import processor, source, threads
from flume_rx.model.config import load
from flume_rx.store import scripts
from flume_rx.surfaces import processes

QUEUE = "trace"
STEPS = ("pushed", "sent", "woke", "reply", "decoded", "handed", "taken", "first")

_stamps: dict[float, dict[str, float]] = {}


def trace_job(enqueued_at: float) -> None:
    """The job: stamps its first line."""
    _stamps.setdefault(enqueued_at, {})["first"] = time.time()


def _install() -> None:
    """In the worker process: wrap the engine's steps so each job gets its stamps."""
    last = {"woke": 0.0, "reply": 0.0}
    awaiting_wait: list[dict[str, float]] = []

    selector_select = engine_loop.TimelySelector.select

    def select(self: Any, timeout: float | None = None) -> Any:
        if awaiting_wait:  # the loop's first wait after a hand-off: where it lets go of the interpreter
            now = time.time()
            for stamps in awaiting_wait:
                stamps["loop_waits"] = now
            awaiting_wait.clear()
        events = selector_select(self, timeout)
        if events:
            last["woke"] = time.time()
        return events

    engine_loop.TimelySelector.select = select  # type: ignore[method-assign]

    def stamp_reply(name: str) -> None:
        """Wrap the runner's method ``name`` so the moment its Redis reply is back is noted."""
        call = getattr(scripts.AsyncRunner, name)

        async def stamped(self: Any, *args: Any) -> Any:
            reply = await call(self, *args)
            last["reply"] = time.time()
            return reply

        setattr(scripts.AsyncRunner, name, stamped)

    stamp_reply("_last_reply")  # a blocking wait and the call after it, in one round trip (after_wait)
    stamp_reply("_send")  # each round trip of run

    decode = source.JobSource._decode

    async def _decode(self: Any, payloads: Any) -> Any:
        deliveries = await decode(self, payloads)
        now = time.time()
        for delivery in deliveries:
            stamps = _stamps.setdefault(delivery.job.args[0], {})
            stamps.update(woke=last["woke"], reply=last["reply"], decoded=now)
        return deliveries

    source.JobSource._decode = _decode  # type: ignore[method-assign]

    put_all = threads.StageThreads._put_all

    def _put_all(self: Any, calls: list[tuple[Any, ...]]) -> None:
        for call in calls:
            args = call[3]
            if call[0] is not None and args and isinstance(args[0], source.Delivery):
                stamps = _stamps.setdefault(args[0].job.args[0], {})
                stamps["handed"] = time.time()
                awaiting_wait.append(stamps)
        put_all(self, calls)

    threads.StageThreads._put_all = _put_all  # type: ignore[method-assign]

    take = processor._take

    def _take(item: Any, queued: Any) -> Any:
        _stamps.setdefault(item.job.args[0], {})["taken"] = time.time()
        return take(item, queued)

    processor._take = _take


def worker_main(config_path: str, out_path: str) -> int:
    worker("TraceJob")(trace_job)
    _install()
    if os.environ.get("TRACE_WAKE_SWITCH_S"):  # a variant: the switch interval while an idle thread wakes
        threads.WAKE_SWITCH_INTERVAL_S = float(os.environ["TRACE_WAKE_SWITCH_S"])
    if os.environ.get("TRACE_WAKE_YIELD"):  # a variant: 0 hands a call to an idle thread without yielding
        threads.YIELD_ON_WAKE = os.environ["TRACE_WAKE_YIELD"] == "1"
    if os.environ.get("TRACE_SWITCH_S"):  # a variant: the interpreter's switch interval
        sys.setswitchinterval(float(os.environ["TRACE_SWITCH_S"]))
    exit_if_stages_hang = processes._exit_if_stages_hang

    def write_then_exit() -> None:  # it may leave with os._exit, past any finally
        Path(out_path).write_text(json.dumps([{"enqueued": k, **v} for k, v in _stamps.items()]))
        exit_if_stages_hang()

    processes._exit_if_stages_hang = write_then_exit
    return processes.run_worker_process(load(config_path))


def _config(url: str, stages: int | None) -> str:
    lines = [f'redis_url = "{url}"', 'namespace = "trace"', f"[pipelines.{QUEUE}]", f'queue = "{QUEUE}"']
    if stages is not None:
        lines.append(f"processor = {{ stages = {stages} }}")
    return "\n".join(lines) + "\n"


def _variant_env(variant: str) -> dict[str, str]:
    """``base`` or ``NAME=VALUE,...``: environment variables for the worker process."""
    if variant == "base":
        return {}
    return dict(pair.split("=", 1) for pair in variant.split(","))


_send_stamp = [0.0]


def _stamp_sends() -> None:
    """In the producer: note when each command is written to Redis (after the enqueue's own Python)."""
    send: Any = redis.connection.Connection.send_packed_command

    def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        _send_stamp[0] = time.time()
        send(self, command, check_health)

    redis.connection.Connection.send_packed_command = send_packed_command  # type: ignore[method-assign]


def run_once(
    url: str, stages: int | None, rate: float, seconds: float, variant: str
) -> list[dict[str, float]]:
    redis.Redis.from_url(url).flushdb()  # counts start from nothing (the warm-up waits on `processed`)
    workdir = Path(tempfile.mkdtemp(prefix="flume-trace-"))
    config = workdir / "flume.toml"
    config.write_text(_config(url, stages))
    out = workdir / "stamps.json"
    env = {**os.environ, **_variant_env(variant)}
    tree = env.pop("TRACE_TREE", None)
    if tree is not None:  # the worker (its engine and this module) from another checkout
        env["PYTHONPATH"] = tree
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.latency_path", "worker", str(config), str(out)], env=env, cwd=tree
    )
    flume = Flume(redis_url=url, namespace="trace")
    sent: dict[float, float] = {}
    pushed: dict[float, float] = {}
    try:
        for _ in range(20):  # warm up: the worker is up and its threads started
            flume.enqueue(QUEUE, "TraceJob", [0.0])
        deadline = time.monotonic() + 60
        while flume.stats([QUEUE])[QUEUE]["processed"] < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        interval = 1.0 / rate
        began = time.perf_counter()
        for i in range(int(rate * seconds)):
            due = began + i * interval
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            at = time.time()
            flume.enqueue(QUEUE, "TraceJob", [at])
            sent[at] = time.time()
            pushed[at] = _send_stamp[0]
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        flume.close()
    records = [r for r in json.loads(out.read_text()) if r["enqueued"] in sent]
    for record in records:
        record["sent"] = sent[record["enqueued"]]
        record["pushed"] = pushed[record["enqueued"]]
    return records


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summarize(records: list[dict[str, float]]) -> dict[str, Any]:
    """Per step (from the step before it, and from the enqueue), p50/p90/p99 in ms."""
    complete = [r for r in records if all(r.get(step) for step in STEPS)]
    out: dict[str, Any] = {"jobs": len(records), "complete": len(complete)}
    previous = "enqueued"
    for step in STEPS:
        gaps = [(r[step] - r[previous]) * 1000 for r in complete]
        total = [(r[step] - r["enqueued"]) * 1000 for r in complete]
        if gaps:
            out[step] = {
                "from": previous,
                "p50_ms": round(_pct(gaps, 50), 4),
                "p90_ms": round(_pct(gaps, 90), 4),
                "p99_ms": round(_pct(gaps, 99), 4),
                "since_enqueue_p50_ms": round(_pct(total, 50), 4),
                "since_enqueue_p99_ms": round(_pct(total, 99), 4),
            }
        # The push ran after `pushed` (the producer's write) and before `sent` (its call returned): the loop's
        # wake-up counts from the write.
        previous = "pushed" if step == "sent" else step
    # The loop woke before the producer's call returned: the sent step overlaps what follows.
    waits = [(r["loop_waits"] - r["handed"]) * 1000 for r in complete if r.get("loop_waits")]
    if waits:
        out["handed_to_loop_waits_p50_ms"] = round(_pct(waits, 50), 4)
        out["taken_after_loop_waits"] = sum(
            r["taken"] > r["loop_waits"] for r in complete if r.get("loop_waits")
        ) / len(waits)
    if complete:
        out["woke_before_sent"] = sum(r["woke"] < r["sent"] for r in complete) / len(complete)
    return out


def main(argv: list[str]) -> int:
    if argv and argv[0] == "worker":
        return worker_main(argv[1], argv[2])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_path", description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--stages", type=int, default=None, help="processor stages (flume_rx's default if unset)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], help="base, or NAME=VALUE,... (repeatable)")
    parser.add_argument("--out", default=None, help="write the summary JSON here")
    args = parser.parse_args(argv)
    variants = args.variant or ["base"]
    _stamp_sends()
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with LocalRedis() as server:
        for round_ in range(args.rounds):
            for variant in variants:
                load = os.getloadavg()[0]
                records = run_once(server.url, args.stages, args.rate, args.seconds, variant)
                summary = summarize(records)
                summary["load_average"] = load
                results[variant].append(summary)
                first = summary.get("first", {})
                print(
                    f"round {round_} {variant}: load {load:.1f}, first p50 {first.get('since_enqueue_p50_ms')} "
                    f"p99 {first.get('since_enqueue_p99_ms')} ms; "
                    + ", ".join(f"{s} {summary[s]['p50_ms']:.3f}" for s in STEPS if s in summary)
                    + f"; loop waits {summary.get('handed_to_loop_waits_p50_ms')} ms after the hand-off, "
                    f"taken after it {summary.get('taken_after_loop_waits')}",
                    flush=True,
                )
    report: dict[str, Any] = {
        "rate": args.rate,
        "seconds": args.seconds,
        "stages": args.stages,
        "variants": {},
    }
    for variant, rounds in results.items():
        report["variants"][variant] = {
            "rounds": rounds,
            "median_first_p50_ms": statistics.median(r["first"]["since_enqueue_p50_ms"] for r in rounds),
            "median_first_p99_ms": statistics.median(r["first"]["since_enqueue_p99_ms"] for r in rounds),
            "median_step_p50_ms": {
                s: statistics.median(r[s]["p50_ms"] for r in rounds) for s in STEPS if s in rounds[0]
            },
        }
        print(variant, json.dumps({k: v for k, v in report["variants"][variant].items() if k != "rounds"}))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
