"""cpu_affinity: which CPU each worker process keeps to (``cpus_for``), and that its threads inherit it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from flume_rx import Flume
from flume_rx.model.errors import ConfigError
from flume_rx.surfaces.processes import cpus_for

ROOT = Path(__file__).resolve().parents[1]


def test_spread_puts_supervised_processes_one_per_cpu_in_turn_and_leaves_a_lone_one_alone() -> None:
    assert [cpus_for("spread", i, 3, [0, 1]) for i in range(3)] == [{0}, {1}, {0}]
    assert [cpus_for("spread", i, 2, [4, 6]) for i in range(2)] == [{4}, {6}]
    assert cpus_for("spread", 0, 1, [0, 1]) is None  # separate lone processes would all take CPU 0
    assert cpus_for("off", 1, 4, [0, 1]) is None


def test_listed_cpus_are_taken_in_turn_even_by_a_lone_process() -> None:
    assert cpus_for((3,), 0, 1, [0, 1, 2, 3]) == {3}
    assert [cpus_for((2, 0), i, 3, [0, 1, 2]) for i in range(3)] == [{2}, {0}, {2}]


def test_a_listed_cpu_the_process_may_not_use_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"lists CPU 7, which this process may not use \(it may use 0, 1\)"):
        cpus_for((7,), 0, 1, [0, 1])


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux")
def test_the_worker_command_refuses_a_cpu_it_may_not_use_before_any_process_starts(
    redis_url: str, tmp_path: Path
) -> None:
    beyond = max(os.sched_getaffinity(0)) + 1
    config = tmp_path / "flume.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\ncpu_affinity = [{beyond}]\n[pipelines.main]\nqueue = "cpus"\n'
    )
    command = [sys.executable, "-m", "flume_rx", "worker", "--config", str(config), "--processes", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode != 0
    assert f"cpu_affinity lists CPU {beyond}" in done.stderr.decode()


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs (Linux)"
)
def test_each_supervised_worker_process_and_its_stage_threads_keep_to_one_cpu_of_their_own(
    redis_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "flume.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\nnamespace = "cpus"\nimports = ["tests.integration.sample_workers"]\n'
        # Few jobs held at once, so the second process finds work left when it starts.
        '[pipelines.main]\nqueue = "cpus"\nmax_demand = 2\nprocessor = { stages = 1 }\n'
    )
    with Flume(redis_url=redis_url, namespace="cpus") as flume:
        flume.bulk_enqueue("cpus", [("AffinityWorker", [0.05]) for _ in range(40)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLUME_TEST_REDIS_URL": redis_url}
    command = [sys.executable, "-m", "flume_rx", "worker", "--config", str(config), "--processes", "2"]
    started = time.monotonic()
    done = subprocess.run([*command, "--burst"], env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert time.monotonic() - started < 120
    client = redis.Redis.from_url(redis_url)
    try:
        seen = {pid: cpus.decode() for pid, cpus in client.hgetall("test:affinity").items()}
    finally:
        client.close()
    allowed = sorted(os.sched_getaffinity(0))
    # Both processes took jobs (40 of 50 ms each, two held at a time by each).
    assert len(seen) == 2, seen
    assert sorted(seen.values()) == sorted({str(allowed[0]), str(allowed[1])}), seen
