"""Operating a cluster: pause and resume across two worker processes, queue peek and delete, consumers, and
the CLI commands that do the same (``pause``, ``queue``, ``consumers``, ``stats --watch --json``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.client import Monitor

from flume_rx import Flume

QUEUE = "ops"
NS = "op"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_file(redis_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "flume.toml"
    path.write_text(
        f'redis_url = "{redis_url}"\nnamespace = "{NS}"\nimports = ["tests.integration.sample_workers"]\n'
        f'orphan_timeout = 5000\n[pipelines.main]\nqueue = "{QUEUE}"\nmax_demand = 5\n'
        '[pipelines.main.rate_limiter]\nallowed = 1000\nperiod = 1000\nkey = "ops-limit"\n'
    )
    return path


def _env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "FLUME_TEST_REDIS_URL": redis_url}


def _cli(redis_url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "flume_rx", *args],
        env=_env(redis_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _wait(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def workers(redis_url: str, config_file: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "flume_rx", "worker", "--config", str(config_file)],
            env=_env(redis_url),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    yield processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr.decode()


def _wait_for_a_fetch_by_each(monitor: Monitor, consumers: list[str], timeout_s: float = 30.0) -> None:
    """Read Redis's MONITOR stream until each consumer has run fetch.lua since the monitor started.

    fetch.lua checks the pause flag and moves jobs in one atomic step, and a worker's fetches follow one
    another, so once a consumer's fetch came after a change, that consumer has seen it: an idle fetch that
    was blocking in Redis when the queue was paused has returned by then.
    """
    pending = set(consumers)
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for a fetch by {sorted(pending)}")
        command = monitor.next_command()["command"]
        if command.startswith("EVALSHA") and f"{{{NS}:{QUEUE}}}:paused" in command:
            pending -= {c for c in pending if c in command.split()}


def _runs(client: redis.Redis, tokens: list[str]) -> dict[str, int]:
    values: list[bytes | None] = client.hmget("test:runs", tokens)  # type: ignore[assignment]
    return {t: int(v or 0) for t, v in zip(tokens, values, strict=True)}


def test_pause_stops_every_worker_and_resume_runs_every_job_once(
    redis_url: str, config_file: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    flume = Flume(redis_url, NS)
    client = redis.Redis.from_url(redis_url)
    warmup = [f"w{i}" for i in range(20)]
    flume.bulk_enqueue(QUEUE, [("RecordWorker", [t]) for t in warmup])
    _wait(lambda: len(flume.consumers([QUEUE])) == 2, what="both workers to register")
    _wait(lambda: all(n == 1 for n in _runs(client, warmup).values()), what="the warm-up jobs")

    consumers = [c["consumer"] for c in flume.consumers([QUEUE])]
    assert "'ops' paused" in _cli(redis_url, "pause", QUEUE, "--config", str(config_file))
    assert flume.stats([QUEUE])[QUEUE]["paused"]
    # socket_timeout: a stream silent that long (workers fetch every second) fails the test, not hangs it.
    watcher = redis.Redis.from_url(redis_url, socket_timeout=30)
    with watcher.monitor() as monitor:
        _wait_for_a_fetch_by_each(monitor, consumers)  # every worker has seen the pause
        held = [f"p{i}" for i in range(30)]
        flume.bulk_enqueue(QUEUE, [("RecordWorker", [t]) for t in held])
        _wait_for_a_fetch_by_each(monitor, consumers)  # a worker ignoring the pause would have taken some
    watcher.close()
    stats = flume.stats([QUEUE])[QUEUE]
    assert set(_runs(client, held).values()) == {0}
    assert stats["queued"] == 30 and stats["in_flight"] == 0
    assert all(p.poll() is None for p in workers), "paused workers keep running"
    assert len(flume.consumers([QUEUE])) == 2, "paused workers keep beating"

    flume.resume(QUEUE)
    _wait(lambda: all(n >= 1 for n in _runs(client, held).values()), what="the held jobs after resume")
    assert set(_runs(client, held).values()) == {1}, "every job ran exactly once: nothing lost, nothing twice"
    final = flume.stats([QUEUE])[QUEUE]
    assert not final["paused"] and final["queued"] == 0
    flume.close()


def test_consumers_lists_each_live_worker_with_a_recent_heartbeat(
    redis_url: str, config_file: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    flume = Flume(redis_url, NS)
    _wait(lambda: len(flume.consumers([QUEUE])) == 2, what="both workers to register")
    consumers = flume.consumers([QUEUE])
    assert all(c["queue"] == QUEUE and c["in_flight"] == 0 and c["age_s"] < 5 for c in consumers)
    pids = sorted(int(c["consumer"].split(":")[1]) for c in consumers)
    assert pids == sorted(p.pid for p in workers)
    printed = json.loads(_cli(redis_url, "consumers", "--config", str(config_file), "--json"))
    assert sorted(c["consumer"] for c in printed) == sorted(c["consumer"] for c in consumers)
    flume.close()


def test_peek_shows_jobs_in_run_order_and_delete_removes_them_everywhere(redis_url: str) -> None:
    flume = Flume(redis_url, NS)
    ids = flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"k{i}"]) for i in range(5)])
    later = flume.enqueue_in(QUEUE, 3600, "RecordWorker", ["later"])

    assert [job.id for job in flume.peek(QUEUE)] == ids
    assert [job.id for job in flume.peek(QUEUE, limit=2)] == ids[:2]
    assert [job.args for job in flume.peek(QUEUE, "scheduled")] == [["later"]]

    assert flume.delete(QUEUE, [ids[1], ids[3], later, "no-such-job"]) == 3
    assert [job.id for job in flume.peek(QUEUE)] == [ids[0], ids[2], ids[4]]
    assert flume.peek(QUEUE, "scheduled") == []
    stats = flume.stats([QUEUE])[QUEUE]
    assert stats["queued"] == 3 and stats["scheduled"] == 0
    flume.close()


def test_cli_queue_peek_delete_and_stats_watch_json(redis_url: str, config_file: Path) -> None:
    flume = Flume(redis_url, NS)
    ids = flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"c{i}"]) for i in range(3)])
    config = str(config_file)

    peeked = json.loads(_cli(redis_url, "queue", "peek", QUEUE, "--config", config, "--json"))
    assert [row["id"] for row in peeked] == ids and peeked[0]["args"] == ["c0"]
    assert "1 job(s) deleted" in _cli(redis_url, "queue", "delete", QUEUE, ids[0], "--config", config)
    assert "RecordWorker" in _cli(redis_url, "queue", "peek", QUEUE, "--config", config)

    watch = subprocess.Popen(
        [sys.executable, "-m", "flume_rx", "stats", "--config", config, "--watch", "--json"],
        env=_env(redis_url),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        second = json.loads(watch.stdout.readline())
    finally:
        watch.send_signal(signal.SIGINT)
        try:
            watch.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            watch.kill()  # never leave it running into the next test
            watch.communicate()
            raise
    assert second["time"] > first["time"]
    (row,) = first["pipelines"]
    assert row["pipeline"] == "main" and row["queue"] == QUEUE and row["queued"] == 2
    assert row["rate_limit_use"] == 0.0 and row["processed_per_s"] == 0.0 and row["latency_p50_ms"] is None
    flume.close()
