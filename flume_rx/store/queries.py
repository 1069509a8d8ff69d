"""The read side of the admin verbs: stats, rates, consumers, work left, peek and a window's use, as pure
functions from arguments to Redis operations (``_ops_*``), the parsers of their replies (``_parse_*``), and the
types they return. Both stores use them, as they do :mod:`flume_rx.store.commands` for the worker's verbs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, TypedDict

from flume_rx.store.commands import (
    LATENCY_SAMPLES,
    RATE_MINUTES,
    RATE_SECONDS,
    _hash,
    _pairs,
    _redis_ms,
    _text,
)
from flume_rx.store.keys import Keys
from flume_rx.store.scripts import _Cmd, _Op

SHORT_RATE_S = 5
"""The short window of ``stats``' rates, beside the 60 s one: long enough to smooth one slow second out,
short enough to show a stall or a burst as it happens."""


class QueueStats(TypedDict):
    """Counts of one queue, as :meth:`RedisStore.stats` reports them."""

    queued: int
    in_flight: int
    scheduled: int
    retry: int
    dead: int
    processed: int
    failed: int
    requeued: int
    consumers: int
    """Consumers alive: a heartbeat within the orphan timeout."""
    consumers_silent: int
    """Consumers silent for longer than the orphan timeout: taken for dead, their jobs come back at the next
    orphan recovery."""
    paused: bool
    processed_per_s: float
    """Cluster-wide, over the last 60 complete seconds (from the per-second buckets in Redis)."""
    failed_per_s: float
    processed_per_s_5s: float
    """As ``processed_per_s``, over the last :data:`SHORT_RATE_S` complete seconds: what happens now."""
    failed_per_s_5s: float
    latency_p50_ms: float | None
    """Enqueue to settle, over the last :data:`LATENCY_SAMPLES` settled jobs; None before any."""
    latency_p99_ms: float | None


class ConsumerInfo(TypedDict):
    """One consumer of one queue, as :meth:`RedisStore.consumers` reports it."""

    queue: str
    consumer: str
    last_seen: float
    """Its last heartbeat or fetch, unix seconds on the Redis clock."""
    age_s: float
    in_flight: int
    alive: bool
    """False once its heartbeat is older than the orphan timeout: it is taken for dead."""


class RatePoint(TypedDict):
    """Jobs settled in one bucket (a second or a minute) starting at ``t`` (unix seconds)."""

    t: int
    processed: int
    failed: int


def _ops_stats_first(keys: Keys, queue: str) -> list[_Op]:
    k = keys.of(queue)
    return [
        _Cmd(("LLEN", k.queue)),
        _Cmd(("ZCARD", k.scheduled)),
        _Cmd(("ZCARD", k.retry)),
        _Cmd(("ZCARD", k.dead)),
        _Cmd(("HGETALL", k.stats)),
        _Cmd(("EXISTS", k.paused)),
        _Cmd(("ZRANGE", k.consumers, 0, -1, "WITHSCORES")),
        _Cmd(("TIME",)),
        _Cmd(("HGETALL", k.seconds)),
        _Cmd(("LRANGE", k.latency, 0, LATENCY_SAMPLES - 1)),
    ]


_STATS_FIRST = 10


DEFAULT_ORPHAN_TIMEOUT_S = 15.0
"""The config's default ``orphan_timeout``: a consumer silent for longer is taken for dead."""


def _parse_stats(first: Sequence[Any], orphan_timeout_s: float) -> tuple[QueueStats, list[str]]:
    """The counts of one queue, and every consumer in its heartbeat set (a silent one may still hold jobs)."""
    queued, scheduled, retry, dead, counters, paused, beats, now, seconds, latency = first
    counts = _hash(counters)
    now_ms = _redis_ms(now)
    now_s = now_ms // 1000
    consumers = _pairs(beats)
    alive = sum(1 for _, beat in consumers if _is_alive(now_ms, beat, orphan_timeout_s))
    # The 60 complete seconds before the current one: a partial second would read as a dip.
    recent = _ring(_hash(seconds), RATE_SECONDS, now_s - 60, now_s - 1)
    p50, p99 = _percentiles(sorted(_latency_samples(latency)), (0.5, 0.99))
    stats = QueueStats(
        queued=int(queued),
        in_flight=0,
        scheduled=int(scheduled),
        retry=int(retry),
        dead=int(dead),
        processed=int(counts.get("processed", 0)),
        failed=int(counts.get("failed", 0)),
        requeued=int(counts.get("requeued", 0)),
        consumers=alive,
        consumers_silent=len(consumers) - alive,
        paused=bool(paused),
        processed_per_s=sum(p["processed"] for p in recent) / 60,
        failed_per_s=sum(p["failed"] for p in recent) / 60,
        processed_per_s_5s=sum(p["processed"] for p in recent[-SHORT_RATE_S:]) / SHORT_RATE_S,
        failed_per_s_5s=sum(p["failed"] for p in recent[-SHORT_RATE_S:]) / SHORT_RATE_S,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
    )
    return stats, [_text(c) for c, _ in consumers]


def _is_alive(now_ms: int, beat_ms: float, orphan_timeout_s: float) -> bool:
    # The same rule as orphan recovery (silent for the timeout or longer is dead), so the views and the
    # recovery never disagree about a consumer.
    return now_ms - beat_ms < orphan_timeout_s * 1000


def _ring(fields: dict[str, Any], size: int, first: int, last: int) -> list[RatePoint]:
    """The buckets ``first..last`` of a ring hash written by ``settle.lua`` (``t<slot>`` holds the bucket
    number the slot counts now, ``p<slot>``/``f<slot>`` its processed/failed); empty buckets read as zero."""
    points: list[RatePoint] = []
    for bucket in range(max(first, last - size + 1), last + 1):
        slot = bucket % size
        current = fields.get(f"t{slot}") is not None and int(_text(fields[f"t{slot}"])) == bucket
        processed = int(_text(fields.get(f"p{slot}", 0))) if current else 0
        failed = int(_text(fields.get(f"f{slot}", 0))) if current else 0
        points.append(RatePoint(t=bucket, processed=processed, failed=failed))
    return points


def _latency_samples(raw: Sequence[Any]) -> list[float]:
    """The latency samples that are finite numbers: anything else in the list is bad data, left out, so the
    percentiles (and the JSON of every view) stay finite."""
    samples: list[float] = []
    for item in raw:
        try:
            value = float(_text(item))
        except (ValueError, UnicodeDecodeError):
            continue
        if math.isfinite(value):
            samples.append(value)
    return samples


def _percentiles(ordered: Sequence[float], quantiles: Sequence[float]) -> list[float | None]:
    """Nearest-rank percentiles of an ascending sequence; None for each when it is empty."""
    if not ordered:
        return [None for _ in quantiles]
    return [ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] for q in quantiles]


def _ops_rates(keys: Keys, queue: str, resolution: Literal["second", "minute"]) -> list[_Op]:
    k = keys.of(queue)
    return [_Cmd(("TIME",)), _Cmd(("HGETALL", k.seconds if resolution == "second" else k.minutes))]


def _parse_rates(
    reply: Sequence[Any], resolution: Literal["second", "minute"], count: int
) -> list[RatePoint]:
    now, fields = reply
    unit, size = (1, RATE_SECONDS) if resolution == "second" else (60, RATE_MINUTES)
    current = _redis_ms(now) // 1000 // unit
    points = _ring(_hash(fields), size, current - count, current - 1)
    return [RatePoint(t=p["t"] * unit, processed=p["processed"], failed=p["failed"]) for p in points]


def _ops_work_left_first(keys: Keys, queue: str) -> list[_Op]:
    k = keys.of(queue)
    return [
        _Cmd(("TIME",)),
        _Cmd(("EXISTS", k.paused)),
        _Cmd(("LLEN", k.queue)),
        _Cmd(("ZCARD", k.retry)),
        _Cmd(("ZRANGE", k.consumers, 0, -1)),
    ]


_WORK_LEFT_FIRST = 5


def _ops_work_left_then(keys: Keys, queue: str, first: Sequence[Any]) -> bool | list[_Op]:
    """What ``first`` says of one queue: True (jobs queued or waiting to retry), False (paused: counts as no
    work), else the operations still to ask: due scheduled jobs and every consumer's in-flight length."""
    now, paused, queued, retry, consumers = first
    if paused:
        return False
    if int(queued) or int(retry):
        return True
    k = keys.of(queue)
    return [
        _Cmd(("ZCOUNT", k.scheduled, "-inf", _redis_ms(now))),
        *(_Cmd(("LLEN", k.inflight(_text(c)))) for c in consumers),
    ]


def _ops_consumers(keys: Keys, queue: str) -> list[_Op]:
    return [_Cmd(("TIME",)), _Cmd(("ZRANGE", keys.of(queue).consumers, 0, -1, "WITHSCORES"))]


def _parse_consumers(queue: str, reply: Sequence[Any], orphan_timeout_s: float) -> list[ConsumerInfo]:
    now, beats = reply
    now_ms = _redis_ms(now)
    return [
        ConsumerInfo(
            queue=queue,
            consumer=_text(c),
            last_seen=beat / 1000,
            age_s=max(0.0, (now_ms - beat) / 1000),
            in_flight=0,
            alive=_is_alive(now_ms, beat, orphan_timeout_s),
        )
        for c, beat in _pairs(beats)
    ]


PeekWhere = Literal["queued", "scheduled", "retry", "dead"]


def _ops_peek(keys: Keys, queue: str, where: PeekWhere, start: int, count: int) -> _Op:
    k = keys.of(queue)
    if where == "queued":
        # Jobs leave from the right: the next to run is the last element.
        return _Cmd(("LRANGE", k.queue, -(start + count), -(start + 1)))
    key = {"scheduled": k.scheduled, "retry": k.retry, "dead": k.dead}[where]
    return _Cmd(("ZRANGE", key, start, start + count - 1, "WITHSCORES"))


def _parse_peek(where: PeekWhere, reply: Any) -> list[tuple[bytes, float | None]]:
    if where == "queued":
        return [(bytes(p), None) for p in reversed(reply)]
    return [(payload, score / 1000) for payload, score in _pairs(reply)]


def _ops_rate_use(keys: Keys, key: str, period_ms: float) -> list[_Op]:
    log_key, _ = keys.rate(key)
    return [_Cmd(("TIME",)), _Cmd(("ZRANGE", log_key, 0, -1, "WITHSCORES"))]


def _parse_rate_use(reply: Sequence[Any], period_ms: float) -> int:
    now, entries = reply
    now_us = int(now[0]) * 1_000_000 + int(now[1])
    since = now_us - period_ms * 1000
    # Members are "seq:tokens" scored g + hold: those still inside the last period are the tokens in use.
    return sum(int(_text(m).rsplit(":", 1)[1]) for m, score in _pairs(entries) if score > since)
