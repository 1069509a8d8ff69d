"""A benchmark run stopped with SIGTERM leaves nothing running: its workers and private redis-servers stop too.

Before, SIGTERM ended the runner at once, and the redis-servers it had started (and a peer's workers, mid
drain) outlived it, each with its port and its temporary folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_a_run_stopped_with_sigterm_stops_the_servers_and_workers_it_started(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUME_BENCH_")}
    runner = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--only", "throughput", "--peer", "flume_rx",
         "--jobs", "200000", "--out", str(tmp_path / "results.json")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    started: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 90
        # Wait until the drain is under way: the private servers and at least one worker process are up.
        while time.monotonic() < deadline:
            for child in psutil.Process(runner.pid).children(recursive=True):
                started.setdefault(child.pid, child)
            names = [" ".join(_cmdline(p)) for p in started.values()]
            if sum("redis-server" in n for n in names) >= 3 and any("flume_worker" in n for n in names):
                break
            assert runner.poll() is None, "the run ended before it could be stopped"
            time.sleep(0.1)
        else:
            pytest.fail(f"the run never started its servers and a worker: {names}")
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=60) != 0
        _, alive = psutil.wait_procs(list(started.values()), timeout=15)
        left = [" ".join(_cmdline(p)) for p in alive if _running(p)]
        assert not left, f"still running after the run was stopped: {left}"
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        for process in started.values():  # what a failing run left, so it does not outlive the test either
            if _running(process):
                process.kill()


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return list(process.cmdline())
    except psutil.Error:  # gone meanwhile
        return []


def _running(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
