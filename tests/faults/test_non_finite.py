"""Non-finite numbers (NaN, +-inf) are bad data: they never reach the stats, and JSON output stays valid."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from flume_rx import Flume
from flume_rx.model import codec
from flume_rx.model import config as config_module
from flume_rx.model.errors import ConfigError, DecodeError
from flume_rx.store import SyncStore
from flume_rx.store.keys import Keys
from flume_rx.surfaces.watch import snapshot
from flume_rx.testing import FlumeTest

from .dashboard_process import dashboard_process
from .harness import QUEUE, ROOT, runs, write_config

NON_FINITE = [float("-inf"), float("inf"), float("nan")]


def _strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, which are not JSON (Python prints them unless told not to)."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"invalid JSON: {constant} in output")

    return json.loads(text, parse_constant=refuse)


def _cli(redis_url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "flume_rx", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), "FLUME_TEST_REDIS_URL": redis_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _raw_record(token: str, created_at: float, enqueued_at: float) -> bytes:
    record = [
        codec.FORMAT_VERSION,
        f"raw-{token}",
        QUEUE,
        "RecordWorker",
        [token],
        0,
        created_at,
        enqueued_at,
        1,
    ]
    return msgpack.packb([*record, None], use_bin_type=True)


@pytest.mark.parametrize("field", ["created_at", "enqueued_at"])
@pytest.mark.parametrize("value", NON_FINITE, ids=["-inf", "inf", "nan"])
def test_a_record_with_a_non_finite_time_does_not_decode(field: str, value: float) -> None:
    now = time.time()
    payload = _raw_record(
        "t", value if field == "created_at" else now, value if field == "enqueued_at" else now
    )
    with pytest.raises(DecodeError, match=f"'{field}'.*finite"):
        codec.decode(payload)


def test_raw_records_with_non_finite_times_go_to_the_dead_letters_and_stats_stay_valid_json(
    redis_url: str, tmp_path: Path
) -> None:
    """Before: the records ran, their latency was inf or NaN, and ``stats --json`` printed Infinity."""
    client = redis.Redis.from_url(redis_url)
    with Flume(redis_url, "t") as flume:
        flume.enqueue(QUEUE, "RecordWorker", ["good"])  # registers the queue, and one sample that is fine
    now = time.time()
    bad = [_raw_record(f"bad{i}", now, value) for i, value in enumerate(NON_FINITE)]
    client.lpush(Keys("t").of("jobs").queue, *bad)
    config_file = write_config(tmp_path / "flume.toml", redis_url)
    _cli(redis_url, "worker", "--config", str(config_file), "--burst")

    assert runs(client) == {"good": 1}, "a record with a non-finite enqueued_at ran"
    with Flume(config=config_module.load(config_file)) as flume:
        dead = flume.dead_list(QUEUE)
    assert len(dead) == 3
    assert all(job.error is not None and "finite" in job.error.message for job in dead)

    printed = _strict_json(_cli(redis_url, "stats", "--config", str(config_file), "--json"))
    stats = printed[QUEUE]
    assert stats["dead"] == 3 and stats["processed"] == 1
    assert all(math.isfinite(stats[k]) for k in ("latency_p50_ms", "latency_p99_ms"))
    client.close()


def test_bad_latency_samples_in_redis_are_left_out_of_stats_and_views(redis_url: str, tmp_path: Path) -> None:
    """Samples written by an older version or by hand: NaN, infinities, words. Before: p99 was inf, the JSON
    said Infinity, and the dashboard's /api/overview answered 500."""
    client = redis.Redis.from_url(redis_url)
    with Flume(redis_url, "t") as flume:
        flume.enqueue(QUEUE, "RecordWorker", ["x"])
    client.lpush(
        Keys("t").of("jobs").latency, b"12.5", b"inf", b"-inf", b"nan", b"Infinity", b"garbage", b"7.5"
    )
    config_file = write_config(tmp_path / "flume.toml", redis_url)
    config = config_module.load(config_file)
    with Flume(config=config) as flume:
        stats = flume.stats([QUEUE])[QUEUE]
    assert (stats["latency_p50_ms"], stats["latency_p99_ms"]) == (7.5, 12.5)

    printed = _strict_json(_cli(redis_url, "stats", "--config", str(config_file), "--json"))
    assert printed[QUEUE]["latency_p99_ms"] == 12.5
    with SyncStore.from_url(redis_url, "t") as store:
        rows = snapshot(store, config)
    assert json.loads(json.dumps(rows, allow_nan=False))[0]["latency_p99_ms"] == 12.5
    with dashboard_process(config_file) as dashboard:
        response = dashboard.request("GET", "/api/overview", headers={"Host": f"127.0.0.1:{dashboard.port}"})
    assert response.status == 200, response.body
    overview = _strict_json(response.body)
    assert overview["pipelines"][0]["latency_p99_ms"] == 12.5
    client.close()


@pytest.mark.parametrize("value", NON_FINITE, ids=["-inf", "inf", "nan"])
def test_enqueue_in_and_at_refuse_non_finite_times_naming_the_argument(redis_url: str, value: float) -> None:
    """Before: "cannot convert float NaN to integer", an OverflowError for the infinities."""
    client = redis.Redis.from_url(redis_url)
    with Flume(redis_url, "t") as flume:
        with pytest.raises(ConfigError, match=r"^seconds must be a finite number"):
            flume.enqueue_in(QUEUE, value, "RecordWorker", ["x"])
        with pytest.raises(ConfigError, match=r"^unix_ts must be a finite number"):
            flume.enqueue_at(QUEUE, value, "RecordWorker", ["x"])
        with pytest.raises(ConfigError, match=r"^unique_for must be"):
            flume.enqueue(QUEUE, "RecordWorker", ["x"], unique_key="k", unique_for=value)
    assert client.keys(Keys("t").of("jobs").tag + "*") == []
    test_mode = FlumeTest()
    with pytest.raises(ConfigError, match=r"^seconds must be a finite number"):
        test_mode.enqueue_in(QUEUE, value, "RecordWorker", ["x"])
    with pytest.raises(ConfigError, match=r"^unix_ts must be a finite number"):
        test_mode.enqueue_at(QUEUE, value, "RecordWorker", ["x"])
    client.close()
