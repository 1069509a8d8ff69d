"""Consumers whose heartbeat is older than orphan_timeout are counted as silent, not live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flume_rx import Flume
from flume_rx import config as config_module

from .harness import QUEUE, ROOT, WorkerProcess, wait_until, write_config

ORPHAN_TIMEOUT_MS = 1000


def _cli(redis_url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "flume_rx.cli", *args],
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
