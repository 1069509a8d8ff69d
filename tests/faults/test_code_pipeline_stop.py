"""A pipeline built in code and run with ``flume.run()`` stops as gracefully as ``flume-rx worker``: on Ctrl-C
(SIGINT), on SIGTERM, and when its task is cancelled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from flume_rx import Flume
from flume_rx.store import Keys

from .harness import QUEUE, ROOT, leftover_keys, runs, wait_until

JOBS = 100

APP = textwrap.dedent(
    """
    import asyncio, os, sys
    from flume_rx import Flume
    from flume_rx import operators as fo
    import tests.integration.sample_workers  # registers RecordWorker

    flume = Flume(os.environ["FLUME_TEST_REDIS_URL"], "t")
    window = flume.window("code-limit", allowed=1000, period_s=1.0)
    pipeline = flume.source("jobs", max_demand=20).pipe(
        fo.buffer_with_time_or_count(0.05, 5),
        fo.throttle(window, cost=len),
        flume.process(stages=4),
    )

    async def cancelled_once_running():
        task = asyncio.create_task(flume.run(pipeline, handle_signals=False))
        while not flume.stats(["jobs"])["jobs"]["in_flight"]:
            await asyncio.sleep(0.02)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the test says when
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            print("cancelled", flush=True)

    if sys.argv[1] == "cancel":
        asyncio.run(cancelled_once_running())
    else:
        asyncio.run(flume.run(pipeline))
    print("returned", flush=True)
    """
)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "cancel"])
def test_a_pipeline_in_code_stops_gracefully(redis_url: str, tmp_path: Path, how: str) -> None:
    """Jobs take 2 s, so the stop lands while the first ones run, whatever the load on the machine.

    Before: Ctrl-C printed a traceback (exit -2) and SIGTERM killed the process (exit -15), both leaving the
    running jobs in the in-flight list until orphan recovery."""
    client = redis.Redis.from_url(redis_url)
    with Flume(redis_url, "t") as flume:
        flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"j{i}", 2.0]) for i in range(JOBS)])
    app = tmp_path / "app.py"
    app.write_text(APP, encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, str(app), how],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "FLUME_TEST_REDIS_URL": redis_url},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: client.llen("test:starts") > 0, 60, "the first job to start")
        if how == "cancel":
            assert process.stdin is not None
            process.stdin.write("\n")
            process.stdin.flush()
        else:
            process.send_signal(getattr(signal, how))
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, err
    assert ("cancelled" if how == "cancel" else "returned") in out.split(), out
    for symptom in ("Traceback", "unreachable", "stopped on an error"):
        assert symptom not in err, err
    assert leftover_keys(client) == [], "jobs or a heartbeat were left behind"
    ran = runs(client)
    assert set(ran.values()) == {1}, "a job ran twice"
    assert len(ran) + client.llen(Keys("t").of("jobs").queue) == JOBS, "every job ran or is back on the queue"
    assert len(ran) < JOBS, "the stop came too late to test anything"
    client.close()
