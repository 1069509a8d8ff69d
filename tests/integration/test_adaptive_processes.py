"""An adaptive window in front of a downstream whose limit changes mid-run, with several worker processes.

The downstream is the demo's fake SES on 127.0.0.1: a sliding one-second limit, "Throttling" for the rest, and
the demo's worker raises ``flume_rx.Throttled`` on it. Phases end by counts of accepted calls, never by time,
and everything asserted is a count or a state of the shared window, never a speed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from flume_rx.client import Flume
from flume_rx.demo import (
    DEMO_QUEUE,
    DEMO_WORKER,
    FAKE_SES_ENV,
    SES_STARTS_ENV,
    STARTS_KEY_ENV,
    FakeSES,
    worker_processes,
)
from flume_rx.store import SyncStore

ALLOWED = 100


def _config(redis_url: str, namespace: str) -> str:
    # max_retries = 0: a refusal that spent a retry would leave a dead letter, and none may.
    return f"""
redis_url = "{redis_url}"
namespace = "{namespace}"
imports = ["flume_rx.demo"]
shutdown_timeout = 3000

[pipelines.{DEMO_QUEUE}]
max_demand = 20
rate_limiter = {{ allowed = {ALLOWED}, period = 1000, adaptive = true }}
processor = {{ stages = 5 }}
retry = {{ max_retries = 0 }}
"""


def _wait_for_accepted(
    fake: FakeSES, count: int, store: SyncStore, rates: list[float], limit_s: float
) -> None:
    """Sample the shared window's rate until the downstream has accepted ``count`` calls in all."""
    give_up = time.monotonic() + limit_s
    while len(fake.accepted) < count:
        assert time.monotonic() < give_up, f"the downstream accepted only {len(fake.accepted)} of {count}"
        dead = store.stats([DEMO_QUEUE])[DEMO_QUEUE]["dead"]
        assert dead == 0, f"{dead} job(s) died: {store.dead_list(DEMO_QUEUE, 1)}"
        seen = store.window_rate(DEMO_QUEUE)
        if seen is not None:
            rates.append(seen[0])
        time.sleep(0.02)


@pytest.mark.slow
def test_several_processes_follow_a_downstream_that_changes_its_limit(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = 60, 90  # the downstream's limits, both below the window's 100/s
    fake = FakeSES(limit=first, latency_s=0.005)
    namespace = f"adaptive{time.time_ns()}"
    with fake.serve() as ses_url, tempfile.TemporaryDirectory() as workdir:
        monkeypatch.setenv(FAKE_SES_ENV, ses_url)
        monkeypatch.setenv(SES_STARTS_ENV, redis_url)
        monkeypatch.setenv(STARTS_KEY_ENV, f"{namespace}:demo:starts")
        config_path = Path(workdir) / "adaptive.toml"
        config_path.write_text(_config(redis_url, namespace), encoding="utf-8")
        flume = Flume(redis_url, namespace)
        store = SyncStore.from_url(redis_url, namespace)
        try:
            flume.bulk_enqueue(DEMO_QUEUE, [(DEMO_WORKER, [f"u{i}@example.com", "hi"]) for i in range(2000)])
            before, after = [], []
            with worker_processes(config_path, redis_url, 3):
                _wait_for_accepted(fake, 6 * first, store, before, limit_s=120)
                changed_at, refused_before = time.monotonic(), fake.rejected
                fake.limit = second
                _wait_for_accepted(fake, 6 * first + 8 * second, store, after, limit_s=120)
                refused_after = fake.rejected - refused_before
            stats = flume.stats([DEMO_QUEUE])[DEMO_QUEUE]
        finally:
            store.close()
            flume.close()

    accepted_before = sum(1 for t in fake.accepted if t < changed_at)
    accepted_after = len(fake.accepted) - accepted_before
    # Refusals never spend a retry and never fail a job.
    assert stats["dead"] == 0 and stats["failed"] == 0
    # The window found the slower downstream: its shared rate went below allowed ...
    assert min(before) < ALLOWED
    # ... and held near it: a window that stayed at 100/s would see 40% of its calls refused.
    assert refused_before <= 0.15 * accepted_before
    # After the raise it probed past the old limit, and refusals stayed rare; never above allowed.
    assert max(after) > first * 1.1
    assert refused_after <= 0.1 * accepted_after
    assert max(before + after) <= ALLOWED
