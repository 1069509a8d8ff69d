"""cpu_affinity: which CPU a worker process keeps to (a list: ``cpus_for``; ``"spread"``: the CPU keeper, whose
own tests are in test_cpu_keeper.py), and that its stage threads keep to it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from flume_rx import Flume
from flume_rx.model.errors import ConfigError
from flume_rx.surfaces.cpu_keeper import KEEPER_NEEDS, CpuKeeper
from flume_rx.surfaces.processes import cpus_for

ROOT = Path(__file__).resolve().parents[1]


def test_spread_and_off_keep_no_process_to_a_cpu_from_its_start() -> None:
    # "spread" leaves it to the keeper, which takes a CPU once the process is busy.
    assert [cpus_for("spread", i, [0, 1]) for i in range(3)] == [None, None, None]
    assert cpus_for("off", 1, [0, 1]) is None


def test_listed_cpus_are_taken_in_turn_even_by_a_lone_process() -> None:
    assert cpus_for((3,), 0, [0, 1, 2, 3]) == {3}
    assert [cpus_for((2, 0), i, [0, 1, 2]) for i in range(3)] == [{2}, {0}, {2}]


def test_a_listed_cpu_the_process_may_not_use_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"lists CPU 7, which this process may not use \(it may use 0, 1\)"):
        cpus_for((7,), 0, [0, 1])


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


needs_the_keeper = pytest.mark.skipif(not CpuKeeper.can_run(), reason=KEEPER_NEEDS)


def _run_workers(redis_url: str, tmp_path: Path, processes: int, jobs: int) -> dict[str, str]:
    """Drain ``jobs`` CPU-busy jobs (40 ms each) with ``flume-rx worker --processes N --burst``; the CPUs a
    stage thread of each process could use at its last job, by process."""
    config = tmp_path / "flume.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\nnamespace = "cpus"\nimports = ["tests.integration.sample_workers"]\n'
        # Few jobs held at once, so a second process finds work left when it starts.
        '[pipelines.main]\nqueue = "cpus"\nmax_demand = 2\nprocessor = { stages = 1 }\n'
    )
    with Flume(redis_url=redis_url, namespace="cpus") as flume:
        flume.bulk_enqueue("cpus", [("AffinityWorker", [0.04]) for _ in range(jobs)])
    claims = tmp_path / "tmp"  # the claims of this test's processes only
    claims.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLUME_TEST_REDIS_URL": redis_url, "TMPDIR": str(claims)}
    command = [
        sys.executable,
        "-m",
        "flume_rx",
        "worker",
        "--config",
        str(config),
        "--processes",
        str(processes),
    ]
    done = subprocess.run([*command, "--burst"], env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    client = redis.Redis.from_url(redis_url)
    try:
        return {pid.decode(): cpus.decode() for pid, cpus in client.hgetall("test:affinity").items()}
    finally:
        client.close()


@needs_the_keeper
def test_a_busy_lone_worker_process_keeps_its_stage_threads_to_one_cpu(
    redis_url: str, tmp_path: Path
) -> None:
    seen = _run_workers(redis_url, tmp_path, processes=1, jobs=40)
    allowed = {str(cpu) for cpu in os.sched_getaffinity(0)}
    assert len(seen) == 1, seen
    assert next(iter(seen.values())) in allowed, seen


@needs_the_keeper
def test_busy_supervised_worker_processes_keep_to_one_cpu_each_of_their_own(
    redis_url: str, tmp_path: Path
) -> None:
    seen = _run_workers(redis_url, tmp_path, processes=2, jobs=80)
    allowed = sorted(os.sched_getaffinity(0))
    # Both processes took jobs, and by their last each kept to a CPU the other did not.
    assert len(seen) == 2, seen
    assert len(set(seen.values())) == 2 and set(seen.values()) <= {str(cpu) for cpu in allowed}, seen
