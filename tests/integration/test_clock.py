"""Due times come from Redis's clock, never from a producer's."""

from __future__ import annotations

import time
import types

import pytest
import redis

import flume_rx.surfaces.client as client_module
from flume_rx import Flume
from flume_rx.store.keys import Keys


def test_enqueue_in_is_due_after_the_delay_on_redis_clock_even_if_the_producer_clock_is_an_hour_off(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    skewed = types.SimpleNamespace(time=lambda: time.time() + 3600.0)
    monkeypatch.setattr(client_module, "time", skewed)
    flume = Flume(redis_url, "t")
    flume.enqueue_in("jobs", 0.5, "Anything", [])

    client = redis.Redis.from_url(redis_url)
    [(_, due_ms)] = client.zrange(Keys("t").of("jobs").scheduled, 0, -1, withscores=True)
    seconds, micros = client.time()
    redis_now_ms = seconds * 1000 + micros // 1000
    assert 0 < due_ms - redis_now_ms <= 500  # not an hour late
    flume.close()
