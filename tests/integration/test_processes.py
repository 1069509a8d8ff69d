"""Real worker processes (`flume-rx worker`) on a private Redis: kills, graceful stops, a shared rate limit."""

from __future__ import annotations

import bisect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flume_rx import Flume

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "work"


def _write_config(tmp_path: Path, redis_url: str, pipeline: str) -> Path:
    path = tmp_path / "flume.toml"
    path.write_text(
        f"""
redis_url = "{redis_url}"
namespace = "p"
imports = ["tests.integration.sample_workers"]
orphan_timeout = 1000
shutdown_timeout = 3000

[pipelines.work]
queue = "{QUEUE}"
{pipeline}
""",
        encoding="utf-8",
    )
    return path


def _worker(config: Path, redis_url: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLUME_TEST_REDIS_URL": redis_url}
    return subprocess.Popen(
        [sys.executable, "-m", "flume_rx", "worker", "--config", str(config), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def _wait_for(condition: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_sigkilled_worker_loses_no_job(
    tmp_path: Path, redis_url: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    client = redis.Redis.from_url(redis_url)
    flume = Flume(redis_url, "p")
    jobs = 2000
    flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"j{i}", 0.002]) for i in range(jobs)])
    config = _write_config(tmp_path, redis_url, "max_demand = 50\nprocessor = { stages = 8 }")

    victim = _worker(config, redis_url)
    procs.append(victim)
    assert _wait_for(lambda: client.hlen("test:runs") > 200, 60)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    in_flight_at_kill = flume.stats([QUEUE])[QUEUE]["in_flight"]
    assert in_flight_at_kill > 0  # the kill really left jobs behind

    survivor = _worker(config, redis_url)
    procs.append(survivor)
    assert _wait_for(lambda: client.hlen("test:runs") == jobs, 120), client.hlen("test:runs")

    runs = {k.decode(): int(v) for k, v in client.hgetall("test:runs").items()}
    assert set(runs) == {f"j{i}" for i in range(jobs)}  # every job done at least once
    duplicates = sum(n - 1 for n in runs.values())
    assert duplicates <= 50  # at most what the dead consumer held (max_demand)
    assert _wait_for(lambda: flume.stats([QUEUE])[QUEUE]["in_flight"] == 0, 10)


def test_sigterm_stops_gracefully_and_returns_what_it_held(
    tmp_path: Path, redis_url: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    client = redis.Redis.from_url(redis_url)
    flume = Flume(redis_url, "p")
    flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"j{i}", 0.05]) for i in range(500)])
    config = _write_config(tmp_path, redis_url, "max_demand = 40\nprocessor = { stages = 4 }")

    worker = _worker(config, redis_url)
    procs.append(worker)
    assert _wait_for(lambda: client.hlen("test:runs") >= 8, 60)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0

    stats = flume.stats([QUEUE])[QUEUE]
    done = client.hlen("test:runs")
    assert stats["in_flight"] == 0  # nothing left behind in the consumer's list
    assert stats["queued"] + stats["processed"] == 500  # unstarted jobs went back, none lost
    assert stats["processed"] == done


def test_sigterm_hands_back_the_sync_jobs_handed_to_threads_ahead_and_none_runs_twice(
    tmp_path: Path, redis_url: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Each stage thread holds its next job while it runs one; a stop hands those back, and they run once."""
    client = redis.Redis.from_url(redis_url)
    flume = Flume(redis_url, "p")
    jobs = 300
    flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"j{i}", 0.03]) for i in range(jobs)])
    config = _write_config(tmp_path, redis_url, "max_demand = 40\nprocessor = { stages = 4 }")

    first = _worker(config, redis_url)
    procs.append(first)
    assert _wait_for(lambda: client.hlen("test:runs") >= 12, 60)
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 0
    assert flume.stats([QUEUE])[QUEUE]["in_flight"] == 0

    second = _worker(config, redis_url)
    procs.append(second)
    assert _wait_for(lambda: client.hlen("test:runs") == jobs, 120), client.hlen("test:runs")
    runs = {k.decode(): int(v) for k, v in client.hgetall("test:runs").items()}
    assert sorted(runs.values()) == [1] * jobs  # handed back unstarted, or run: never both


def test_three_processes_share_one_400_per_second_window(
    tmp_path: Path, redis_url: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    client = redis.Redis.from_url(redis_url)
    flume = Flume(redis_url, "p")
    jobs = 1200
    flume.bulk_enqueue(QUEUE, [("AsyncRecordWorker", [f"j{i}"]) for i in range(jobs)])
    config = _write_config(
        tmp_path,
        redis_url,
        "max_demand = 100\nprocessor = { stages = 20 }\nrate_limiter = { allowed = 400, period = 1000 }",
    )
    processes = 3
    procs.extend(_worker(config, redis_url) for _ in range(processes))
    assert _wait_for(lambda: client.hlen("test:runs") == jobs, 120)

    starts = sorted(float(s) for s in client.lrange("test:starts", 0, -1))
    assert len(starts) == jobs
    most_in_any_second = max(bisect.bisect_left(starts, t + 1.0) - i for i, t in enumerate(starts))
    # The window lets at most 400 jobs begin in any sliding second across the processes. A job stamps its start
    # in its first line, in the same step of its process's loop as the begin the window counted: the stamp lags
    # only while that loop is held up, so per process at most one job begun before a second is stamped in it.
    assert most_in_any_second <= 400 + processes, most_in_any_second
    assert most_in_any_second >= 300  # and the limit is used, not merely respected
