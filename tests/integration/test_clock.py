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
    client = redis.Redis.from_url(redis_url)

    def redis_now_ms() -> int:
        seconds, micros = client.time()
        return seconds * 1000 + micros // 1000

    # Redis read its clock for the due time between these two readings, however slow the calls were.
    before_ms = redis_now_ms()
    flume.enqueue_in("jobs", 0.5, "Anything", [])
    after_ms = redis_now_ms()

    [(_, due_ms)] = client.zrange(Keys("t").of("jobs").scheduled, 0, -1, withscores=True)
    assert before_ms + 500 <= due_ms <= after_ms + 500  # not an hour late
    flume.close()
