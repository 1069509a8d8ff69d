"""Consumers whose heartbeat is older than orphan_timeout are counted as silent, not live."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from flume_rx import Flume
from flume_rx.model import config as config_module
from flume_rx.store import Keys, RedisStore
from flume_rx.surfaces import runtime as runtime_module
from flume_rx.surfaces.runtime import WorkerRuntime

from .harness import QUEUE, ROOT, WorkerProcess, wait_until, write_config

ORPHAN_TIMEOUT_MS = 1000


def _cli(redis_url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "flume_rx", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), "FLUME_TEST_REDIS_URL": redis_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_killed_workers_are_reported_silent_and_not_counted_as_consumers(
    redis_url: str, tmp_path: Path
) -> None:
    config_file = write_config(tmp_path / "flume.toml", redis_url, orphan_timeout=ORPHAN_TIMEOUT_MS)
    config = config_module.load(config_file)
    workers = [WorkerProcess(config_file, redis_url, name=f"w{i}") for i in range(3)]
    with Flume(config=config) as flume:
        try:
            wait_until(lambda: flume.stats([QUEUE])[QUEUE]["consumers"] == 3, 60, "three live consumers")
        finally:
            for process in workers:
                process.kill()
        # No process is left to recover them, so the three stay in the heartbeat set, ageing.
        wait_until(
            lambda: all(c["age_s"] * 1000 > ORPHAN_TIMEOUT_MS for c in flume.consumers([QUEUE])),
            30,
            "the killed workers' heartbeats to pass orphan_timeout",
        )
        stats = flume.stats([QUEUE])[QUEUE]
        assert (stats["consumers"], stats["consumers_silent"]) == (0, 3)
        listed = flume.consumers([QUEUE])
        assert len(listed) == 3 and not any(c["alive"] for c in listed)

    printed_stats = json.loads(_cli(redis_url, "stats", "--config", str(config_file), "--json"))
    assert (printed_stats[QUEUE]["consumers"], printed_stats[QUEUE]["consumers_silent"]) == (0, 3)
    printed = json.loads(_cli(redis_url, "consumers", "--config", str(config_file), "--json"))
    assert [c["alive"] for c in printed] == [False, False, False]
    table = _cli(redis_url, "consumers", "--config", str(config_file))
    assert table.count("dead (silent)") == 3, table


def test_a_stopped_worker_leaves_no_heartbeat_behind(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A beat landing after the stop took the consumer out of the set put it back for good: a dead consumer in
    every count (the soak saw one). Here the stop waits, after giving its jobs back, until a beat lands or the
    heartbeat thread is gone; before the fix the thread was still beating, and the consumer came back."""
    config = config_module.parse(
        {
            "redis_url": redis_url,
            "namespace": "t",
            "orphan_timeout": 300,  # a beat every 100 ms
            "pipelines": {"main": {"queue": QUEUE}},
        }
    )
    runtime = WorkerRuntime(config, block_s=0.05)
    raw = redis.Redis.from_url(redis_url)
    consumers_key = Keys("t").of(QUEUE).consumers
    threads: list[threading.Thread] = []
    start = runtime_module._Heartbeat.start

    def record(self: threading.Thread) -> None:
        threads.append(self)
        start(self)

    give_back = RedisStore.requeue_all

    async def give_back_then_wait(self: RedisStore, queue: str, consumer: str, payloads: Any = None) -> int:
        moved = await give_back(self, queue, consumer, payloads)
        deadline = time.monotonic() + 30
        while raw.zscore(consumers_key, consumer) is None and any(t.is_alive() for t in threads):
            assert time.monotonic() < deadline, "the heartbeat thread neither beat nor ended"
            await asyncio.sleep(0.01)
        return moved

    monkeypatch.setattr(runtime_module._Heartbeat, "start", record)
    monkeypatch.setattr(RedisStore, "requeue_all", give_back_then_wait)

    async def run_then_stop() -> None:
        task = asyncio.create_task(runtime.run())
        while not raw.zcard(consumers_key):
            await asyncio.sleep(0.01)
        runtime.stop()
        await task

    asyncio.run(run_then_stop())
    assert raw.zrange(consumers_key, 0, -1) == []
    raw.close()
