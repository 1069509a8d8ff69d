"""``flume-rx worker --burst`` stops when no work is left, retries not yet due included; ``--burst=ready``
stops when nothing is ready now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from flume_rx import Flume
from flume_rx.store import Keys

from .harness import QUEUE, ROOT, runs, write_config

# The retry of the failed job is due 500 to 1,000 ms after its failure (half the delay is jitter): long after
# an empty queue is first seen, and after SCHEDULED_SOON_S has passed however fast the worker starts.
RETRY = {"max_retries": 3, "backoff_initial": 1000, "backoff_max": 1000}
SCHEDULED_SOON_S = 0.4
JOBS_KEYS = Keys("t").of("jobs")


def _burst(redis_url: str, config_file: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flume_rx", "worker", "--config", str(config_file), *flags],
        env={**os.environ, "PYTHONPATH": str(ROOT), "FLUME_TEST_REDIS_URL": redis_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_burst_runs_until_the_retries_not_yet_due_have_run(redis_url: str, tmp_path: Path) -> None:
    """Before: the worker exited while the failed job waited in the retry set, due later."""
    client = redis.Redis.from_url(redis_url)
    config_file = write_config(tmp_path / "flume.toml", redis_url, {"retry": RETRY})
    with Flume(redis_url, "t") as flume:
        flume.enqueue(QUEUE, "FailOnceWorker", ["flaky"])
        flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"ok{i}"]) for i in range(20)])
        flume.enqueue_in(QUEUE, SCHEDULED_SOON_S, "RecordWorker", ["scheduled-soon"])
        flume.enqueue_in(QUEUE, 3600, "RecordWorker", ["scheduled-later"])

        done = _burst(redis_url, config_file, "--burst")

        assert done.returncode == 0, done.stderr
        assert runs(client)["flaky"] == 1, "the retried job did not run before the burst ended"
        assert {f"ok{i}" for i in range(20)} <= set(runs(client))
        stats = flume.stats([QUEUE])[QUEUE]
        assert (stats["queued"], stats["retry"], stats["in_flight"], stats["dead"]) == (0, 0, 0, 0)
        # A job scheduled for later is not work of this burst; one that fell due during it was.
        assert stats["scheduled"] == 1
        assert "scheduled-later" not in runs(client)
    client.close()


def test_burst_ready_leaves_retries_not_yet_due(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    config_file = write_config(
        tmp_path / "flume.toml",
        redis_url,
        {"retry": {**RETRY, "backoff_initial": 60_000, "backoff_max": 60_000}},
    )
    with Flume(redis_url, "t") as flume:
        flume.enqueue(QUEUE, "FailOnceWorker", ["flaky"])
        flume.enqueue(QUEUE, "RecordWorker", ["ok"])

        done = _burst(redis_url, config_file, "--burst=ready")

        assert done.returncode == 0, done.stderr
        assert runs(client) == {"ok": 1}
        stats = flume.stats([QUEUE])[QUEUE]
        assert (stats["queued"], stats["retry"], stats["in_flight"]) == (0, 1, 0)
    client.close()


def test_burst_waits_for_another_consumers_jobs_in_flight(redis_url: str, tmp_path: Path) -> None:
    """Jobs in a dead consumer's in-flight list are work left: recovery brings them back and the burst runs
    them."""
    client = redis.Redis.from_url(redis_url)
    config_file = write_config(tmp_path / "flume.toml", redis_url, orphan_timeout=500)
    with Flume(redis_url, "t") as flume:
        flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"held{i}"]) for i in range(3)])
    # A consumer that fetched them and died: its in-flight list holds them and its heartbeat is old.
    client.zadd(JOBS_KEYS.consumers, {"gone:1": 1})
    for _ in range(3):
        client.lmove(JOBS_KEYS.queue, JOBS_KEYS.inflight("gone:1"), "RIGHT", "LEFT")

    done = _burst(redis_url, config_file, "--burst")

    assert done.returncode == 0, done.stderr
    assert runs(client) == {f"held{i}": 1 for i in range(3)}
    client.close()
