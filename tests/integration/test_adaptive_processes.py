"""An adaptive window in front of a downstream whose limit changes mid-run, with several worker processes.

The downstream is the demo's fake SES on 127.0.0.1: a sliding one-second limit, refusals for the rest. The
workers raise ``flume_rx.Throttled`` on a refusal: the demo's own worker, or ``flume_rx.integrations.ses``
talking SESv2 to it. Phases end by counts of accepted calls, never by time, and everything asserted is a
count or a state of the shared window, never a speed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flume_rx.store import QueueStats, SyncStore
from flume_rx.surfaces.client import Flume
from flume_rx.surfaces.demo import (
    DEMO_QUEUE,
    DEMO_WORKER,
    FAKE_SES_ENV,
    SES_ENDPOINT_ENV,
    SES_FROM_ENV,
    SES_STARTS_ENV,
    SES_WORKER,
    STARTS_KEY_ENV,
    FakeSES,
    worker_processes,
)

ALLOWED = 100
FIRST, SECOND = 60, 90  # the downstream's limits, both below the window's 100/s

pytestmark = pytest.mark.slow


def _config(redis_url: str, namespace: str, rate_limiter: str) -> str:
    # max_retries = 0: a refusal that spent a retry would leave a dead letter, and none may.
    return f"""
redis_url = "{redis_url}"
namespace = "{namespace}"
imports = ["flume_rx.surfaces.demo"]
shutdown_timeout = 3000

[pipelines.{DEMO_QUEUE}]
max_demand = 20
rate_limiter = {rate_limiter}
processor = {{ stages = 5 }}
retry = {{ max_retries = 0 }}
"""


@dataclass
class Run:
    fake: FakeSES
    changed_at: float
    refused_before: int
    refused_after: int
    rates_before: list[float]
    rates_after: list[float]
    allowed_seen: set[int]
    stats: QueueStats

    def accepted_before(self) -> int:
        return sum(1 for t in self.fake.accepted if t < self.changed_at)

    def accepted_after(self) -> int:
        return len(self.fake.accepted) - self.accepted_before()


def _wait_for_accepted(fake: FakeSES, count: int, store: SyncStore, run: Run, rates: list[float]) -> None:
    """Sample the shared window until the downstream has accepted ``count`` calls in all."""
    give_up = time.monotonic() + 120
    while len(fake.accepted) < count:
        assert time.monotonic() < give_up, f"the downstream accepted only {len(fake.accepted)} of {count}"
        dead = store.stats([DEMO_QUEUE])[DEMO_QUEUE]["dead"]
        assert dead == 0, f"{dead} job(s) died: {store.dead_list(DEMO_QUEUE, 1)}"
        seen = store.window_rate(DEMO_QUEUE)
        if seen is not None:
            rates.append(seen[0])
            run.allowed_seen.add(seen[1])
        time.sleep(0.02)


def _run(
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    fake: FakeSES,
    rate_limiter: str,
    jobs: list[tuple[str, list[Any]]],
    env: dict[str, str],
) -> Run:
    namespace = f"adaptive{time.time_ns()}"
    with fake.serve() as ses_url, tempfile.TemporaryDirectory() as workdir:
        for name, value in {**env, FAKE_SES_ENV: ses_url, SES_STARTS_ENV: redis_url}.items():
            monkeypatch.setenv(name, value.format(ses_url=ses_url))
        monkeypatch.setenv(STARTS_KEY_ENV, f"{namespace}:demo:starts")
        config_path = Path(workdir) / "adaptive.toml"
        config_path.write_text(_config(redis_url, namespace, rate_limiter), encoding="utf-8")
        flume = Flume(redis_url, namespace)
        store = SyncStore.from_url(redis_url, namespace)
        try:
            flume.bulk_enqueue(DEMO_QUEUE, jobs)
            run = Run(fake, 0.0, 0, 0, [], [], set(), flume.stats([DEMO_QUEUE])[DEMO_QUEUE])
            with worker_processes(config_path, redis_url, 3):
                _wait_for_accepted(fake, 6 * FIRST, store, run, run.rates_before)
                run.changed_at, run.refused_before = time.monotonic(), fake.rejected
                fake.limit = SECOND
                _wait_for_accepted(fake, 6 * FIRST + 8 * SECOND, store, run, run.rates_after)
                run.refused_after = fake.rejected - run.refused_before
            run.stats = flume.stats([DEMO_QUEUE])[DEMO_QUEUE]
        finally:
            store.close()
            flume.close()
    return run


def _check(run: Run) -> None:
    # Refusals never spend a retry and never fail a job.
    assert run.stats["dead"] == 0 and run.stats["failed"] == 0
    # The window found the slower downstream: its shared rate went below allowed ...
    assert min(run.rates_before) < ALLOWED
    # ... and held near it: a window that stayed at 100/s would see 40% of its calls refused.
    assert run.refused_before <= 0.15 * run.accepted_before()
    # After the raise it probed past the old limit, and refusals stayed rare; never above allowed.
    assert max(run.rates_after) > FIRST * 1.1
    assert run.refused_after <= 0.1 * run.accepted_after()
    assert max(run.rates_before + run.rates_after) <= ALLOWED


def test_several_processes_follow_a_downstream_that_changes_its_limit(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs: list[tuple[str, list[Any]]] = [(DEMO_WORKER, [f"u{i}@example.com", "hi"]) for i in range(2000)]
    limiter = f"{{ allowed = {ALLOWED}, period = 1000, adaptive = true }}"
    _check(_run(redis_url, monkeypatch, FakeSES(limit=FIRST, latency_s=0.005), limiter, jobs, {}))


def test_the_ses_integration_sized_from_the_quota_follows_the_real_rate(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SES reports an account rate of 100/s, from_ses sizes the window from it, and the downstream really
    # accepts 60/s, then 90/s: the adaptive window corrects the quota from the throttling it meets.
    env = {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL_SESV2": "{ses_url}",
        SES_ENDPOINT_ENV: "{ses_url}",
        SES_FROM_ENV: "sender@example.com",
    }
    message = {"to": ["someone@example.com"], "subject": "Welcome", "text": "Hello"}
    jobs: list[tuple[str, list[Any]]] = [(SES_WORKER, [message]) for _ in range(2000)]
    limiter = (
        '{ from_ses = 1.0, period = 1000, adaptive = true, cost = "flume_rx.integrations.ses:ses_cost" }'
    )
    run = _run(
        redis_url, monkeypatch, FakeSES(limit=FIRST, latency_s=0.005, quota=ALLOWED), limiter, jobs, env
    )
    assert run.allowed_seen == {ALLOWED}  # sized from the account's quota
    _check(run)
