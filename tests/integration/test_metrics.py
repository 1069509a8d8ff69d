"""Prometheus metrics from telemetry: the text exposition after real runs, the HTTP endpoint, and the worker's
``--metrics-port``; plus the cluster-wide rates and latency that ``stats()`` reads from Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flume_rx import Flume, worker
from flume_rx.model import config as config_module
from flume_rx.model.registry import unregister
from flume_rx.model.telemetry import Telemetry
from flume_rx.surfaces.metrics import PrometheusMetrics
from flume_rx.surfaces.runtime import WorkerRuntime

QUEUE = "mq"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def register() -> Iterator[Callable[..., None]]:
    names: list[str] = []

    def add(name: str, fn: Any) -> None:
        worker(name)(fn)
        names.append(name)

    yield add
    for name in names:
        unregister(name)


def _config(redis_url: str, **pipeline: Any) -> config_module.FlumeConfig:
    table: dict[str, Any] = {"queue": QUEUE, "max_demand": 10, "processor": {"stages": 4}}
    table.update(pipeline)
    return config_module.parse({"redis_url": redis_url, "namespace": "m", "pipelines": {"main": table}})


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and sorted labels."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_a_run_fills_counters_histograms_and_gauges(redis_url: str, register: Callable[..., None]) -> None:
    async def ok(n: int) -> None:
        if n == 3:
            raise ValueError("three")

    register("MOk", ok)
    telemetry = Telemetry()
    metrics = PrometheusMetrics(telemetry)
    flume = Flume(redis_url, "m", telemetry=telemetry)
    flume.bulk_enqueue(QUEUE, [("MOk", [i]) for i in range(5)])
    config = _config(redis_url, retry={"max_retries": 0})

    asyncio.run(WorkerRuntime(config, telemetry=telemetry, burst=True).run())

    text = metrics.text()
    s = _samples(text)
    job = (("queue", QUEUE), ("worker", "MOk"))
    assert s[("flume_jobs_enqueued_total", (("queue", QUEUE),))] == 5
    assert s[("flume_jobs_fetched_total", (("queue", QUEUE),))] == 5
    assert s[("flume_jobs_started_total", job)] == 5
    assert s[("flume_jobs_succeeded_total", job)] == 4
    assert s[("flume_jobs_failed_total", job)] == 1
    assert s[("flume_jobs_dead_total", job)] == 1
    assert s[("flume_jobs_running", (("queue", QUEUE),))] == 0
    assert s[("flume_job_duration_seconds_count", job)] == 5
    assert s[("flume_job_duration_seconds_bucket", (("le", "+Inf"), *job))] == 5
    assert s[("flume_job_wait_seconds_count", (("queue", QUEUE),))] == 5
    # The exposition is the text format Prometheus scrapes, with HELP and TYPE lines.
    assert b"# TYPE flume_jobs_succeeded_total counter" in text
    assert b"# HELP flume_job_duration_seconds Run time of an attempt." in text
    metrics.close()
    flume.close()


def test_throttle_batch_pressure_and_consumer_events_map_to_their_metrics() -> None:
    telemetry = Telemetry()
    metrics = PrometheusMetrics(telemetry, prefix="app")
    telemetry.emit("throttle.granted", key="ses", tokens=10, wait_ms=0.0, rate=400.0)
    telemetry.emit("throttle.granted", key="ses", tokens=5, wait_ms=250.0, rate=400.0)
    telemetry.emit("throttle.waited", key="ses", tokens=5, wait_ms=250.0, rate=400.0)
    telemetry.emit("throttle.lapsed", key="ses", tokens=2, rate=400.0)
    telemetry.emit("throttle.penalized", key="ses", rate=250.0, refused=2)
    telemetry.emit("throttle.rate_changed", key="ses", rate=200.0, previous=250.0, cause="refused")
    telemetry.emit("batch.flushed", queue="q", size=10, trigger="count")
    telemetry.emit("batch.flushed", queue="q", size=3, trigger="time")
    telemetry.emit("backpressure.engaged", queue="q", in_flight=100)
    engaged = _samples(metrics.text())[("app_backpressure_active", (("queue", "q"),))]
    telemetry.emit("backpressure.released", queue="q", held_ms=1500.0)
    telemetry.emit("consumer.heartbeat", consumer="c")
    telemetry.emit("consumer.recovered", queue="q", consumer="", jobs=7)

    s = _samples(metrics.text())
    ses, q = (("key", "ses"),), (("queue", "q"),)
    assert s[("app_throttle_grants_total", ses)] == 2
    assert s[("app_throttle_tokens_granted_total", ses)] == 15
    assert s[("app_throttle_waits_total", ses)] == 1
    assert s[("app_throttle_tokens_lapsed_total", ses)] == 2
    assert s[("app_throttle_penalties_total", ses)] == 1
    assert s[("app_throttle_rate", ses)] == 200.0
    assert s[("app_throttle_wait_seconds_sum", ses)] == pytest.approx(0.25)
    assert s[("app_batches_flushed_total", (("queue", "q"), ("trigger", "count")))] == 1
    assert s[("app_batches_flushed_total", (("queue", "q"), ("trigger", "time")))] == 1
    assert s[("app_batch_size_sum", q)] == 13
    assert engaged == 1 and s[("app_backpressure_active", q)] == 0
    assert s[("app_backpressure_engaged_total", q)] == 1
    assert s[("app_backpressure_held_seconds_sum", q)] == pytest.approx(1.5)
    assert s[("app_consumer_heartbeats_total", ())] == 1
    assert s[("app_orphans_recovered_total", q)] == 7

    metrics.close()
    telemetry.emit("consumer.heartbeat", consumer="c")
    assert _samples(metrics.text())[("app_consumer_heartbeats_total", ())] == 1, "closed: no longer listening"


def test_serve_answers_metrics_over_http() -> None:
    telemetry = Telemetry()
    metrics = PrometheusMetrics(telemetry)
    port = metrics.serve(0, addr="127.0.0.1")
    try:
        telemetry.emit("job.enqueued", queue="web", count=2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read()
        assert _samples(body)[("flume_jobs_enqueued_total", (("queue", "web"),))] == 2
    finally:
        metrics.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int, deadline_s: float = 20.0) -> bytes:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                return bytes(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_worker_metrics_port_serves_the_workers_counters(redis_url: str, tmp_path: Path) -> None:
    config_file = tmp_path / "flume.toml"
    config_file.write_text(
        f'redis_url = "{redis_url}"\nnamespace = "mw"\nimports = ["tests.integration.sample_workers"]\n'
        # A heartbeat every second (a third of the orphan timeout), so one is counted within the test.
        "orphan_timeout = 3000\n"
        f'[pipelines.main]\nqueue = "{QUEUE}"\n'
    )
    flume = Flume(redis_url, "mw")
    flume.bulk_enqueue(QUEUE, [("RecordWorker", [f"t{i}"]) for i in range(20)])
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLUME_TEST_REDIS_URL": redis_url}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flume_rx",
            "worker",
            "--config",
            str(config_file),
            "--metrics-port",
            str(port),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        succeeded = heartbeats = 0.0
        while (succeeded < 20 or heartbeats < 1) and time.monotonic() < deadline:
            samples = _samples(_scrape(port))
            succeeded = samples.get(
                ("flume_jobs_succeeded_total", (("queue", QUEUE), ("worker", "RecordWorker"))), 0
            )
            heartbeats = samples.get(("flume_consumer_heartbeats_total", ()), 0)
            time.sleep(0.1)
        assert succeeded == 20
        assert heartbeats >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()
    flume.close()


def test_stats_reports_cluster_rates_latency_and_consumers(
    redis_url: str, register: Callable[..., None]
) -> None:
    async def ok(n: int) -> None:
        if n % 4 == 0:
            raise ValueError("every fourth")

    register("MRate", ok)
    flume = Flume(redis_url, "m")
    flume.bulk_enqueue(QUEUE, [("MRate", [i]) for i in range(40)])
    runtime = WorkerRuntime(_config(redis_url, retry={"max_retries": 0}), burst=True)
    asyncio.run(runtime.run())

    # Rates count complete seconds only: wait until the second of the run is over.
    now = time.time()
    time.sleep(max(0.0, 1.05 - (now % 1.0)))
    stats = flume.stats([QUEUE])[QUEUE]
    assert stats["processed_per_s"] == pytest.approx(30 / 60)
    assert stats["failed_per_s"] == pytest.approx(10 / 60)
    assert stats["latency_p50_ms"] is not None and stats["latency_p99_ms"] is not None
    assert 0 <= stats["latency_p50_ms"] <= stats["latency_p99_ms"]
    per_second = flume.rates(QUEUE, "second", 10)
    assert len(per_second) == 10
    assert sum(p["processed"] for p in per_second) == 30 and sum(p["failed"] for p in per_second) == 10
    assert [p["t"] for p in per_second] == sorted(p["t"] for p in per_second)
    per_minute = flume.rates(QUEUE, "minute", 2)
    assert len(per_minute) == 2 and all(p["t"] % 60 == 0 for p in per_minute)
    assert flume.consumers([QUEUE]) == [], "a consumer that stopped cleanly is forgotten"
    flume.close()
