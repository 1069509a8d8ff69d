"""The Redis store: the only module that knows key names and Lua.

Every key of a queue shares the hash tag ``{<ns>:<queue>}``, so one queue lives on one cluster slot and each
Lua script sees all its keys through ``KEYS[]``. Time always comes from Redis ``TIME``, never from a client's
clock. :class:`RedisStore` (asyncio) serves workers; :class:`SyncStore` serves producers, admin tools and the
heartbeat thread. Both build every call with the same functions (``_ops_*``) and read replies with the same
parsers, so they cannot drift apart.

>>> store = RedisStore.from_url("redis://127.0.0.1:6380/0")  # doctest: +SKIP
>>> await store.enqueue("email", [payload])  # doctest: +SKIP
>>> await store.fetch("email", "host-1:4242", n=10, block_s=5.0)  # doctest: +SKIP
[payload]
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.resources
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypedDict, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import msgpack
import reactivex
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from reactivex import Observable, abc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flume_rx.errors import ConfigError, StoreError
from flume_rx.operators import Grant

log = logging.getLogger("flume_rx.store")

# Jitter comes from a private generator: drawing from the global one would perturb the random state of
# the application (and of Hypothesis, which checks it) from our background loops.
_jitter = random.Random()

_T = TypeVar("_T")

Arg = bytes | str | int | float
ENQUEUE_CHUNK = 1000
"""Payloads per EVALSHA of a bulk enqueue: big enough to be cheap, small enough not to stall Redis."""

DEAD_RETRY_CHUNK = 1000

LATENCY_SAMPLES = 1000
"""Recent enqueue-to-settle latencies kept per queue (a list trimmed at each settle) for p50/p99."""

RATE_SECONDS = 120
"""Per-second processed/failed buckets kept per queue (a ring in one hash, written by ``settle.lua``)."""

RATE_MINUTES = 60
"""Per-minute processed/failed buckets kept per queue (a ring in one hash, written by ``settle.lua``)."""


# --------------------------------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue; all share the hash tag ``{<ns>:<queue>}`` (``{<ns>:<group>}`` for group/name).

    ``tag`` is the prefix of every key of the queue (the hash tag, then ``/name`` for a grouped queue).
    """

    tag: str
    queue: str
    scheduled: str
    retry: str
    dead: str
    consumers: str
    stats: str
    paused: str
    seconds: str = ""
    minutes: str = ""
    latency: str = ""

    def inflight(self, consumer: str) -> str:
        """The in-flight list of one consumer of this queue."""
        return f"{self.tag}:inflight:{consumer}"

    def unique(self, key: str) -> str:
        """The claim of a unique job key on this queue (its value is the holder's job id)."""
        return f"{self.tag}:unique:{key}"

    def cron_tick(self, schedule: str, tick_ms: int) -> str:
        """The claim of one tick of a cron schedule that enqueues to this queue."""
        return f"{self.tag}:cron:{schedule}:{tick_ms}"

    def cron_last(self, schedule: str) -> str:
        """The last tick (unix ms) a cron schedule decided, enqueued or skipped."""
        return f"{self.tag}:cron:{schedule}:last"


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every Redis key name of a namespace; nothing else in flume_rx spells one.

    >>> Keys("flume").of("email").queue
    '{flume:email}:queue'

    A queue named ``group/name`` hashes by its group, so the queues of one multi-queue pipeline
    (``email/urgent``, ``email/bulk``) share a cluster slot and one Lua call can fetch from all of them:

    >>> Keys("flume").of("email/urgent").queue
    '{flume:email}/urgent:queue'
    """

    namespace: str = "flume"

    def __post_init__(self) -> None:
        _check_name(self.namespace, "namespace")

    @property
    def queues(self) -> str:
        """The SET of queue names ever enqueued to (for stats and the dashboard)."""
        return f"{self.namespace}:queues"

    def of(self, queue: str) -> QueueKeys:
        """The keys of ``queue``.

        Raises:
            ConfigError: the name is empty or holds a brace (it would break the hash tag).
        """
        _check_name(queue, "queue name")
        group, _, rest = queue.partition("/")
        grouped = bool(group and rest)
        tag = f"{{{self.namespace}:{group}}}/{rest}" if grouped else f"{{{self.namespace}:{queue}}}"
        return QueueKeys(
            tag=tag,
            queue=f"{tag}:queue",
            scheduled=f"{tag}:scheduled",
            retry=f"{tag}:retry",
            dead=f"{tag}:dead",
            consumers=f"{tag}:consumers",
            stats=f"{tag}:stats",
            paused=f"{tag}:paused",
            seconds=f"{tag}:rate_s",
            minutes=f"{tag}:rate_m",
            latency=f"{tag}:latency",
        )

    def rate(self, key: str) -> tuple[str, str]:
        """The ``(log, meta)`` keys of the token window named ``key``."""
        _check_name(key, "rate limiter key")
        tag = f"{{{self.namespace}:rate:{key}}}"
        return f"{tag}:log", f"{tag}:meta"

    def keyed_rate(self, key: str, sub: str) -> tuple[str, str]:
        """The ``(log, meta)`` keys of window ``sub`` of the per-key limiter ``key`` (all in one slot)."""
        _check_name(key, "rate limiter key")
        tag = f"{{{self.namespace}:rate:{key}}}"
        return f"{tag}:k:{sub}:log", f"{tag}:k:{sub}:meta"


def _check_name(name: str, what: str) -> None:
    if not name or "{" in name or "}" in name:
        raise ConfigError(f"{what} {name!r} must be non-empty and free of '{{' and '}}'; pick another name")


# ---------------------------------------------------------------------------------------------------- Lua


SCRIPTS = (
    "enqueue",
    "fetch",
    "settle",
    "promote",
    "heartbeat",
    "recover",
    "requeue_all",
    "dead_retry",
    "take_tokens",
    "penalize",
    "enqueue_unique",
    "cron_tick",
    "fetch_weighted",
    "take_tokens_multi",
)


@functools.cache
def lua_source(name: str) -> str:
    """The text of ``flume_rx/lua/<name>.lua``, read from the installed package."""
    return importlib.resources.files("flume_rx").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@functools.cache
def _sha(name: str) -> str:
    return hashlib.sha1(lua_source(name).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class _Eval:
    script: str
    keys: tuple[str, ...]
    args: tuple[Arg, ...]

    def command(self) -> tuple[Arg, ...]:
        return ("EVALSHA", _sha(self.script), len(self.keys), *self.keys, *self.args)


@dataclass(frozen=True, slots=True)
class _Cmd:
    args: tuple[Arg, ...]

    def command(self) -> tuple[Arg, ...]:
        return self.args


_Op = _Eval | _Cmd


# ------------------------------------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True)
class Settlement:
    """One outcome for :meth:`RedisStore.settle`.

    Attributes:
        payload: the payload exactly as fetched (the in-flight list member).
        action: ``ack`` (done), ``retry`` (into the retry set at now + ``delay_ms``), ``dead`` (into the dead
            letters), ``requeue`` (back to the fetch end of the queue without spending a retry) or ``release``
            (the job has started and gives up its unique key; the job itself stays in flight).
        new_payload: what goes to retry, dead or the queue instead of ``payload`` (e.g. attempt + 1, error).
        delay_ms: the retry delay, from Redis TIME.
    """

    payload: bytes
    action: Literal["ack", "retry", "dead", "requeue", "release"]
    new_payload: bytes | None = None
    delay_ms: int = 0
    latency_ms: float | None = None
    """Enqueue to settle, sampled into the queue's latency list for p50/p99 (``None``: no sample)."""
    unique: tuple[str, str] | None = None
    """``(unique_key, job_id)`` of a unique job: the settlement releases the key if that job still holds it
    (only ack, dead and release do; a retried job keeps it)."""


@dataclass(frozen=True, slots=True)
class UniqueEnqueue:
    """One job of :meth:`RedisStore.enqueue_unique`: added unless another job holds its ``unique_key``."""

    job_id: str
    payload: bytes
    unique_key: str | None
    """None: an ordinary job, always added (so a bulk call can mix unique and ordinary jobs)."""
    due_s: float = 0.0
    """Unix seconds when the call's mode is ``at``, seconds from Redis TIME when ``in``; unused for ``now``."""


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
    paused: bool
    processed_per_s: float
    """Cluster-wide, over the last 60 complete seconds (from the per-second buckets in Redis)."""
    failed_per_s: float
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


class RatePoint(TypedDict):
    """Jobs settled in one bucket (a second or a minute) starting at ``t`` (unix seconds)."""

    t: int
    processed: int
    failed: int


class TokenReply(NamedTuple):
    """The raw reply of ``take_tokens.lua``: a grant plus where it sits on the Redis clock."""

    tokens: int
    delay_us: int
    hold_us: int
    effective_allowed: float
    start_us: int
    """The grant's start time ``g`` in unix microseconds (Redis TIME)."""


# ------------------------------------------------------------------------------ call builders and parsers
# Each store verb is a pure function from arguments to the Redis operations it needs, shared by the async
# and the sync store; each returns operations that go to Redis in one round trip.


def _ops_enqueue(keys: Keys, queue: str, payloads: Sequence[bytes]) -> list[_Op]:
    k = keys.of(queue)
    ops: list[_Op] = [_Cmd(("SADD", keys.queues, queue))]
    for start in range(0, len(payloads), ENQUEUE_CHUNK):
        chunk = payloads[start : start + ENQUEUE_CHUNK]
        ops.append(_Eval("enqueue", (k.queue, k.scheduled), ("now", *chunk)))
    return ops


def _ops_schedule(
    keys: Keys, queue: str, items: Sequence[tuple[bytes, float]], mode: Literal["at", "in"]
) -> list[_Op]:
    k = keys.of(queue)
    ops: list[_Op] = [_Cmd(("SADD", keys.queues, queue))]
    for start in range(0, len(items), ENQUEUE_CHUNK):
        flat: list[Arg] = [mode]
        for payload, when_s in items[start : start + ENQUEUE_CHUNK]:
            flat += [round(when_s * 1000), payload]
        ops.append(_Eval("enqueue", (k.queue, k.scheduled), tuple(flat)))
    return ops


def _ops_fetch(keys: Keys, queue: str, consumer: str, n: int) -> _Eval:
    k = keys.of(queue)
    return _Eval("fetch", (k.queue, k.inflight(consumer), k.paused, k.consumers), (consumer, n))


def _ops_settle(
    keys: Keys, queue: str, consumer: str, settlements: Sequence[Settlement], dead_max: int, dead_ttl_ms: int
) -> _Eval:
    k = keys.of(queue)
    flat: list[object] = []
    base = (k.inflight(consumer), k.queue, k.retry, k.dead, k.stats, k.seconds, k.minutes)
    unique_keys: list[str] = []
    for s in settlements:
        if s.action not in ("ack", "retry", "dead", "requeue", "release"):
            raise ValueError(
                f"settlement action {s.action!r} is not one of ack, retry, dead, requeue, release"
            )
        unique_index, holder = 0, ""
        if s.unique is not None:
            unique_keys.append(k.unique(s.unique[0]))
            unique_index, holder = len(base) + len(unique_keys), s.unique[1]
        flat += [s.action, s.payload, s.new_payload or b"", max(0, int(s.delay_ms)), unique_index, holder]
    # Redis's cmsgpack reads only the old raw type, hence use_bin_type=False (bytes stay bytes in Lua).
    outcomes: bytes = msgpack.packb(flat, use_bin_type=False)
    return _Eval("settle", (*base, *unique_keys), (dead_max, dead_ttl_ms, outcomes))


def _ops_enqueue_unique(
    keys: Keys,
    queue: str,
    jobs: Sequence[UniqueEnqueue],
    unique_for_ms: int,
    mode: Literal["now", "at", "in"],
) -> list[_Op]:
    k = keys.of(queue)
    ops: list[_Op] = [_Cmd(("SADD", keys.queues, queue))]
    for start in range(0, len(jobs), ENQUEUE_CHUNK):
        unique_keys: list[str] = []
        flat: list[Arg] = [mode, max(1, int(unique_for_ms))]
        for job in jobs[start : start + ENQUEUE_CHUNK]:
            index = 0
            if job.unique_key is not None:
                unique_keys.append(k.unique(job.unique_key))
                index = 2 + len(unique_keys)
            flat += [index, job.job_id, job.payload, 0 if mode == "now" else round(job.due_s * 1000)]
        ops.append(_Eval("enqueue_unique", (k.queue, k.scheduled, *unique_keys), tuple(flat)))
    return ops


def _ops_cron_tick(
    keys: Keys,
    queue: str,
    schedule: str,
    tick_ms: int,
    payload: bytes,
    *,
    claim_ttl_ms: int,
    on_time_ms: int,
    missed: Literal["run_once", "skip"],
) -> list[_Op]:
    k = keys.of(queue)
    return [
        _Cmd(("SADD", keys.queues, queue)),
        _Eval(
            "cron_tick",
            (k.queue, k.cron_tick(schedule, tick_ms), k.cron_last(schedule)),
            (tick_ms, payload, max(1, claim_ttl_ms), max(0, on_time_ms), missed),
        ),
    ]


def _ops_fetch_weighted(
    keys: Keys, queues: Sequence[str], consumer: str, n: int, quotas: Sequence[int]
) -> _Eval:
    if len(quotas) != len(queues):
        raise ValueError(f"fetch_weighted got {len(queues)} queues but {len(quotas)} quotas; pass one each")
    flat_keys: list[str] = []
    for queue in queues:
        k = keys.of(queue)
        flat_keys += [k.queue, k.inflight(consumer), k.paused, k.consumers]
    return _Eval("fetch_weighted", tuple(flat_keys), (consumer, n, *(max(0, int(q)) for q in quotas)))


def _parse_unique(replies: Sequence[Any]) -> list[tuple[bool, str]]:
    # The first reply is the SADD of the queue name; each later one is a chunk's flat (added, id) pairs.
    parsed: list[tuple[bool, str]] = []
    for chunk in replies[1:]:
        parsed += [(bool(int(chunk[i])), _text(chunk[i + 1])) for i in range(0, len(chunk), 2)]
    return parsed


def _ops_latency(keys: Keys, queue: str, settlements: Sequence[Settlement]) -> list[_Op]:
    # Formatted here: redis-py's per-argument encoding of a float costs twice the formatting (one per job).
    samples = [b"%.1f" % s.latency_ms for s in settlements if s.latency_ms is not None]
    if not samples:
        return []
    k = keys.of(queue)
    return [_Cmd(("LPUSH", k.latency, *samples)), _Cmd(("LTRIM", k.latency, 0, LATENCY_SAMPLES - 1))]


def _ops_heartbeat(keys: Keys, queues: Sequence[str], consumer: str) -> list[_Op]:
    # One call per queue rather than one call over all queues: keys of different queues live on different
    # cluster slots, and a pipeline still makes it one round trip.
    return [_Eval("heartbeat", (keys.of(q).consumers,), (consumer,)) for q in queues]


def _ops_requeue(keys: Keys, queue: str, consumer: str, payloads: Sequence[bytes] | None) -> _Eval:
    k = keys.of(queue)
    return _Eval("requeue_all", (k.consumers, k.queue, k.inflight(consumer)), (consumer, *(payloads or ())))


def _ops_stats_first(keys: Keys, queue: str) -> list[_Op]:
    k = keys.of(queue)
    return [
        _Cmd(("LLEN", k.queue)),
        _Cmd(("ZCARD", k.scheduled)),
        _Cmd(("ZCARD", k.retry)),
        _Cmd(("ZCARD", k.dead)),
        _Cmd(("HGETALL", k.stats)),
        _Cmd(("EXISTS", k.paused)),
        _Cmd(("ZRANGE", k.consumers, 0, -1)),
        _Cmd(("TIME",)),
        _Cmd(("HGETALL", k.seconds)),
        _Cmd(("LRANGE", k.latency, 0, LATENCY_SAMPLES - 1)),
    ]


_STATS_FIRST = 10


def _parse_stats(first: Sequence[Any]) -> tuple[QueueStats, list[str]]:
    queued, scheduled, retry, dead, counters, paused, consumers, now, seconds, latency = first
    counts = _hash(counters)
    now_s = _redis_ms(now) // 1000
    # The 60 complete seconds before the current one: a partial second would read as a dip.
    recent = _ring(_hash(seconds), RATE_SECONDS, now_s - 60, now_s - 1)
    p50, p99 = _percentiles(sorted(float(_text(x)) for x in latency), (0.5, 0.99))
    stats = QueueStats(
        queued=int(queued),
        in_flight=0,
        scheduled=int(scheduled),
        retry=int(retry),
        dead=int(dead),
        processed=int(counts.get("processed", 0)),
        failed=int(counts.get("failed", 0)),
        requeued=int(counts.get("requeued", 0)),
        consumers=len(consumers),
        paused=bool(paused),
        processed_per_s=sum(p["processed"] for p in recent) / 60,
        failed_per_s=sum(p["failed"] for p in recent) / 60,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
    )
    return stats, [_text(c) for c in consumers]


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


def _ops_consumers(keys: Keys, queue: str) -> list[_Op]:
    return [_Cmd(("TIME",)), _Cmd(("ZRANGE", keys.of(queue).consumers, 0, -1, "WITHSCORES"))]


def _parse_consumers(queue: str, reply: Sequence[Any]) -> list[ConsumerInfo]:
    now, beats = reply
    now_ms = _redis_ms(now)
    return [
        ConsumerInfo(
            queue=queue,
            consumer=_text(c),
            last_seen=beat / 1000,
            age_s=max(0.0, (now_ms - beat) / 1000),
            in_flight=0,
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


def _ops_delete(keys: Keys, queue: str, payloads: Sequence[bytes]) -> list[_Op]:
    k = keys.of(queue)
    ops: list[_Op] = []
    for payload in payloads:
        ops += [
            _Cmd(("LREM", k.queue, 0, payload)),
            _Cmd(("ZREM", k.scheduled, payload)),
            _Cmd(("ZREM", k.retry, payload)),
            _Cmd(("ZREM", k.dead, payload)),
        ]
    return ops


def _ops_rate_use(keys: Keys, key: str, period_ms: float) -> list[_Op]:
    log_key, _ = keys.rate(key)
    return [_Cmd(("TIME",)), _Cmd(("ZRANGE", log_key, 0, -1, "WITHSCORES"))]


def _parse_rate_use(reply: Sequence[Any], period_ms: float) -> int:
    now, entries = reply
    now_us = int(now[0]) * 1_000_000 + int(now[1])
    since = now_us - period_ms * 1000
    # Members are "seq:tokens" scored g + hold: those still inside the last period are the tokens in use.
    return sum(int(_text(m).rsplit(":", 1)[1]) for m, score in _pairs(entries) if score > since)


def _ops_dead_retry(
    keys: Keys, queue: str, payloads: Sequence[bytes], new_payloads: Sequence[bytes] | None
) -> _Eval:
    if new_payloads is not None and len(new_payloads) != len(payloads):
        raise ValueError(
            f"dead_retry got {len(payloads)} payloads but {len(new_payloads)} new_payloads; pass one each"
        )
    k = keys.of(queue)
    flat: list[Arg] = [len(payloads)]
    for i, payload in enumerate(payloads):
        flat += [payload, new_payloads[i] if new_payloads is not None else b""]
    return _Eval("dead_retry", (k.dead, k.queue), tuple(flat))


def _ops_dead_retry_oldest(keys: Keys, queue: str, limit: int) -> _Eval:
    k = keys.of(queue)
    return _Eval("dead_retry", (k.dead, k.queue), (limit,))


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


def _hash(reply: Any) -> dict[str, Any]:
    if isinstance(reply, dict):
        return {_text(key): value for key, value in reply.items()}
    return {_text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}


def _pairs(reply: Any) -> list[tuple[bytes, float]]:
    """A WITHSCORES reply as (member, score) pairs, whichever shape the client parsed it into."""
    if reply and isinstance(reply[0], list | tuple):
        return [(bytes(m), float(s)) for m, s in reply]
    return [(bytes(reply[i]), float(reply[i + 1])) for i in range(0, len(reply), 2)]


def _redis_ms(time_reply: Any) -> int:
    seconds, micros = time_reply
    return int(seconds) * 1000 + int(micros) // 1000


def _parse_token_reply(reply: Sequence[Any]) -> TokenReply:
    tokens, delay_us, hold_us, effective, start_us = reply
    return TokenReply(int(tokens), int(delay_us), int(hold_us), float(_text(effective)), int(start_us))


# ----------------------------------------------------------------------------------------- error handling


class _OutageLog:
    """Process-wide: one line when Redis first fails and one when it answers again, whichever loop notices.

    Fetch, settle and the heartbeat thread all meet the same outage; each keeps its own backoff
    (:class:`Outage`) but they share this log, so an outage is one warning, not one per loop or call. A
    failure that lasts is repeated as an error every :attr:`repeat_s`, so a stalled worker (Redis refusing a
    script, a key of the wrong type) does not hide behind one old line.
    """

    repeat_s = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None
        self._logged_at = 0.0

    def down(self, what: str, error: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            first = self.since is None
            if not first and now - self._logged_at < self.repeat_s:
                return
            if first:
                self.since = now
            self._logged_at = now
            since = self.since or now
        answered = isinstance(error.__cause__, ResponseError)
        kind = "Redis answered with an error" if answered else "Redis unreachable"
        if first:
            log.warning("%s: %s (%s); retrying with backoff", what, kind, error)
        else:
            log.error("%s: %s for %.0f s now (%s); still retrying", what, kind, now - since, error)

    def up(self) -> None:
        with self._lock:
            if self.since is None:
                return
            elapsed, self.since = time.monotonic() - self.since, None
        log.warning("Redis reachable again after %.1f s", elapsed)


OUTAGE_LOG = _OutageLog()


class Outage:
    """The backoff of one loop through a Redis outage; logging goes through the shared :data:`OUTAGE_LOG`."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None

    def failed(self, error: Exception) -> float:
        """Note a failed call; returns how long to wait before the next (doubling to 5 s, with jitter)."""
        if self.since is None:
            self.since = time.monotonic()
        OUTAGE_LOG.down(self.what, error)
        elapsed = time.monotonic() - self.since
        backoff_s: float = min(5.0, 0.05 * 2 ** min(10, int(elapsed * 2)))
        return backoff_s * _jitter.uniform(0.5, 1.0)

    def ok(self) -> None:
        """Note a call that worked: the end of the outage, if there was one."""
        if self.since is not None:
            self.since = None
            OUTAGE_LOG.up()


def redact_url(url: str) -> str:
    """``url`` without its user name and password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""URL schemes that ask for a Redis Cluster client; the host:port is any node of the cluster."""


def cluster_url(url: str) -> str | None:
    """The plain ``redis://``/``rediss://`` URL of a ``redis+cluster://`` one; None for any other URL."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return f"{plain}://{rest}" if plain and sep else None


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a redis-py cluster client (sync or asyncio)."""
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def _connection_kwargs(client: Any) -> dict[str, Any]:
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        return dict(pool.connection_kwargs)
    kwargs = getattr(client, "connection_kwargs", None)  # asyncio cluster client
    if kwargs is None:
        kwargs = client.nodes_manager.connection_kwargs  # sync cluster client
    return dict(kwargs)


def describe_endpoint(client: redis.Redis | redis.asyncio.Redis) -> str:
    """``redis://host:port/db`` of a client, never with its password."""
    if is_cluster(client):
        nodes: Any = client
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in nodes.get_nodes()[:3])
    pool = client.connection_pool
    kw = pool.connection_kwargs
    db = kw.get("db", 0)
    if kw.get("path"):
        return f"unix://{kw['path']}?db={db}"
    scheme = "rediss" if "SSL" in pool.connection_class.__name__ else "redis"
    return f"{scheme}://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{db}"


def _store_error(client: redis.Redis | redis.asyncio.Redis, exc: Exception) -> StoreError:
    where = describe_endpoint(client)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return StoreError(
            f"cannot reach Redis at {where} ({type(exc).__name__}: {exc}); "
            "check that it runs and that redis_url is right"
        )
    return StoreError(f"Redis at {where} answered with an error ({exc}); check its version (>= 6.2) and logs")


def _check_client(client: redis.Redis | redis.asyncio.Redis) -> None:
    if _connection_kwargs(client).get("decode_responses"):
        raise ConfigError(
            "the Redis client decodes responses (decode_responses=True); payloads are bytes, so pass a "
            "client made with decode_responses=False"
        )


_TRANSPORT_ERRORS = (RedisConnectionError, RedisTimeoutError, ResponseError)


def _client_kwargs(socket_timeout_s: float) -> dict[str, Any]:
    return {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": min(5.0, socket_timeout_s),
        "socket_keepalive": True,
        "health_check_interval": 30,
        "decode_responses": False,
    }


# ------------------------------------------------------------------------------------------------ runners


class _AsyncRunner:
    """Sends operations to Redis in one round trip, loading scripts Redis has not seen (once per client)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        # redis.asyncio leaves execute_command untyped; replies are checked by the parsers anyway.
        self._untyped: Any = client

    async def one(self, op: _Op) -> Any:
        return (await self.run([op]))[0]

    async def run(self, ops: Sequence[_Op], *, transaction: bool = False) -> list[Any]:
        if not ops:
            return []
        try:
            if len(ops) == 1 and not transaction:
                try:
                    return [await self._untyped.execute_command(*ops[0].command())]
                except NoScriptError:
                    await self._load(ops)
                    return [await self._untyped.execute_command(*ops[0].command())]
            results = await self._pipeline(ops, transaction)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                # Redis restarted or flushed its scripts: load and run again only what did not run.
                await self._load([ops[i] for i in missing])
                again = await self._pipeline([ops[i] for i in missing], transaction)
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results
        except _TRANSPORT_ERRORS as exc:
            raise _store_error(self.client, exc) from exc

    async def _pipeline(self, ops: Sequence[_Op], transaction: bool) -> list[Any]:
        if is_cluster(self.client):
            # A cluster pipeline routes each command to its slot's node; it has no MULTI across slots, and
            # the one transaction the store asks for (dead_purge) touches a single key.
            cluster: Any = self.client.pipeline()
            for op in ops:
                cluster.execute_command(*op.command())
            return list(await cluster.execute(raise_on_error=False))
        pipe: Any = self.client.pipeline(transaction=transaction)
        for op in ops:
            pipe.pipeline_execute_command(*op.command())
        return list(await pipe.execute(raise_on_error=False))

    async def _load(self, ops: Sequence[_Op]) -> None:
        for name in {op.script for op in ops if isinstance(op, _Eval)}:
            await self.client.script_load(lua_source(name))


class _SyncRunner:
    """The blocking twin of :class:`_AsyncRunner`."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def one(self, op: _Op) -> Any:
        return self.run([op])[0]

    def run(self, ops: Sequence[_Op], *, transaction: bool = False) -> list[Any]:
        if not ops:
            return []
        try:
            results = self._pipeline(ops, transaction)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                for name in {op.script for op in ops if isinstance(op, _Eval)}:
                    self.client.script_load(lua_source(name))
                again = self._pipeline([ops[i] for i in missing], transaction)
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results
        except _TRANSPORT_ERRORS as exc:
            raise _store_error(self.client, exc) from exc

    def _pipeline(self, ops: Sequence[_Op], transaction: bool) -> list[Any]:
        pipe = self.client.pipeline(transaction=None if is_cluster(self.client) else transaction)
        for op in ops:
            pipe.pipeline_execute_command(*op.command())
        return list(pipe.execute(raise_on_error=False))


# ------------------------------------------------------------------------------------------ the stores


class RedisStore:
    """The asyncio store used by workers: fetch, settle, promote, heartbeat, recover, plus producer verbs.

    Args:
        client: a ``redis.asyncio.Redis`` made with ``decode_responses=False``; its socket timeout must
            exceed the ``block_s`` of :meth:`fetch`.
        namespace: prefix of every key, so several apps can share one Redis.
        dead_max: the dead letters kept per queue; the oldest go first.
        dead_ttl_ms: dead letters older than this are dropped.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        namespace: str = "flume",
        *,
        dead_max: int = 10_000,
        dead_ttl_ms: int = 7 * 24 * 3600 * 1000,
    ) -> None:
        _check_client(client)
        if dead_max < 1:
            raise ConfigError(f"dead_max must be >= 1 (got {dead_max}); set it to the dead letters to keep")
        if dead_ttl_ms < 1:
            raise ConfigError(f"dead_ttl_ms must be >= 1 (got {dead_ttl_ms}); set how long dead letters stay")
        self.client = client
        self.keys = Keys(namespace)
        self.dead_max = dead_max
        self.dead_ttl_ms = dead_ttl_ms
        self._run = _AsyncRunner(client)
        self._owns_client = False

    @classmethod
    def from_url(
        cls,
        url: str,
        namespace: str = "flume",
        *,
        socket_timeout_s: float = 30.0,
        dead_max: int = 10_000,
        dead_ttl_ms: int = 7 * 24 * 3600 * 1000,
    ) -> RedisStore:
        """A store with its own client; :meth:`aclose` closes it.

        Args:
            url: ``redis://[:password@]host:port/db`` or ``rediss://`` for TLS.
            socket_timeout_s: how long any reply may take; blocking fetches must wait less than this.
        """
        try:
            plain = cluster_url(url)
            if plain is not None:
                # The cluster client answers every command the store sends; it routes each by its keys.
                client = cast(
                    redis.asyncio.Redis,
                    redis.asyncio.cluster.RedisCluster.from_url(plain, **_client_kwargs(socket_timeout_s)),
                )
            else:
                client = redis.asyncio.Redis.from_url(url, **_client_kwargs(socket_timeout_s))
        except ValueError as exc:
            raise ConfigError(
                f"redis_url {redact_url(url)!r} is not a valid Redis URL ({exc}); fix it"
            ) from None
        store = cls(client, namespace, dead_max=dead_max, dead_ttl_ms=dead_ttl_ms)
        store._owns_client = True
        return store

    async def aclose(self) -> None:
        """Close the client if this store made it."""
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # producer verbs

    async def enqueue(self, queue: str, payloads: Sequence[bytes]) -> None:
        """Push payloads onto the queue, in order, in one round trip however many there are."""
        if payloads:
            await self._run.run(_ops_enqueue(self.keys, queue, payloads))

    async def schedule(self, queue: str, items: Sequence[tuple[bytes, float]]) -> None:
        """Hold each payload until its due time (unix seconds), then :meth:`promote_due` queues it."""
        if items:
            await self._run.run(_ops_schedule(self.keys, queue, items, "at"))

    async def schedule_in(self, queue: str, items: Sequence[tuple[bytes, float]]) -> None:
        """Hold each payload for a delay in seconds, counted on the Redis clock (immune to client skew)."""
        if items:
            await self._run.run(_ops_schedule(self.keys, queue, items, "in"))

    async def enqueue_unique(
        self,
        queue: str,
        jobs: Sequence[UniqueEnqueue],
        unique_for_ms: int,
        mode: Literal["now", "at", "in"] = "now",
    ) -> list[tuple[bool, str]]:
        """Add each job unless another job holds its ``unique_key`` on this queue, atomically per job.

        A claim lives ``unique_for_ms`` from the job's due time (``mode`` ``now``, or each job's ``due_s`` as
        unix seconds for ``at`` or seconds from Redis TIME for ``in``); settling the job releases it earlier,
        as its ``unique_until`` says. Jobs go to Redis in one round trip.

        Returns:
            Per job, in order: ``(True, its id)`` when added, else ``(False, id of the job holding the key)``.
        """
        if not jobs:
            return []
        return _parse_unique(
            await self._run.run(_ops_enqueue_unique(self.keys, queue, jobs, unique_for_ms, mode))
        )

    async def cron_tick(
        self,
        queue: str,
        schedule: str,
        tick_ms: int,
        payload: bytes,
        *,
        claim_ttl_ms: int,
        on_time_ms: int,
        missed: Literal["run_once", "skip"],
    ) -> tuple[str, int]:
        """Decide one tick of a cron schedule once for every process: enqueue ``payload`` or skip it.

        Returns:
            ``(status, last tick ms)``; status is ``enqueued``, ``skipped``, ``taken`` (another process
            decided it) or ``old`` (a later tick was decided already).
        """
        ops = _ops_cron_tick(
            self.keys, queue, schedule, tick_ms, payload,
            claim_ttl_ms=claim_ttl_ms, on_time_ms=on_time_ms, missed=missed,
        )  # fmt: skip
        status, last = (await self._run.run(ops))[-1]
        return _text(status), int(last)

    async def fetch_weighted(
        self, queues: Sequence[str], consumer: str, n: int, quotas: Sequence[int]
    ) -> list[tuple[str, bytes]]:
        """Move up to ``n`` payloads from several queues into the consumer's in-flight lists, in one call.

        Each queue first gives up to its quota, then the rest of ``n`` comes from the queues in the order
        given (see ``fetch_weighted.lua``). The queues must share a cluster slot (``group/name`` names).

        Returns:
            ``(queue, payload)`` pairs, grouped by queue in the order given; ``[]`` when all are empty or
            paused (this call never blocks).
        """
        if n < 1:
            raise ValueError(f"fetch n must be >= 1 (got {n})")
        reply = await self._run.one(_ops_fetch_weighted(self.keys, queues, consumer, n, quotas))
        counts, payloads = reply[: len(queues)], reply[len(queues) :]
        out: list[tuple[str, bytes]] = []
        position = 0
        for queue, count in zip(queues, counts, strict=True):
            out += [(queue, bytes(p)) for p in payloads[position : position + int(count)]]
            position += int(count)
        return out

    async def time_ms(self) -> int:
        """Redis's clock in unix ms (schedules tick by it, not by this host's clock)."""
        return _redis_ms(await self._run.one(_Cmd(("TIME",))))

    # consumer verbs

    async def fetch(self, queue: str, consumer: str, n: int, block_s: float) -> list[bytes]:
        """Move up to ``n`` payloads into the consumer's in-flight list and return them, oldest first.

        When the queue is empty, waits up to ``block_s`` on one blocking move, so a new job starts within
        milliseconds without polling; then takes up to ``n - 1`` more. Returns ``[]`` when nothing came,
        and while the queue is paused (after waiting ``block_s``).
        """
        if n < 1:
            raise ValueError(f"fetch n must be >= 1 (got {n})")
        self._check_block(block_s)
        k = self.keys.of(queue)
        paused, *payloads = await self._run.one(_ops_fetch(self.keys, queue, consumer, n))
        if payloads or block_s <= 0:
            return list(payloads)
        if paused:
            await asyncio.sleep(block_s)
            return []
        first = await self._run.one(_Cmd(("BLMOVE", k.queue, k.inflight(consumer), "RIGHT", "LEFT", block_s)))
        if first is None:
            return []
        if n == 1:
            return [bytes(first)]
        _, *more = await self._run.one(_ops_fetch(self.keys, queue, consumer, n - 1))
        return [first, *more]

    def _check_block(self, block_s: float) -> None:
        timeout = _connection_kwargs(self.client).get("socket_timeout")
        if block_s > 0 and timeout is not None and block_s + 1.0 > timeout:
            raise ConfigError(
                f"fetch block_s={block_s} must be at least 1 s below the Redis socket timeout ({timeout} s); "
                "lower block_s or raise socket_timeout_s"
            )

    async def settle(self, queue: str, consumer: str, settlements: Sequence[Settlement]) -> int:
        """Apply a batch of outcomes in one round trip.

        Returns:
            How many outcomes were stale: their payload had already left the in-flight list (orphan
            recovery gave it back to the queue), so nothing was moved for them.
        """
        if not settlements:
            return 0
        op = _ops_settle(self.keys, queue, consumer, settlements, self.dead_max, self.dead_ttl_ms)
        # Latency samples ride in the same round trip; the counters stay in the script, which knows the stale.
        return int((await self._run.run([op, *_ops_latency(self.keys, queue, settlements)]))[0])

    async def promote_due(self, queue: str, limit: int = 1000) -> int:
        """Move scheduled and retry payloads that are due onto the queue; safe from any number of workers."""
        k = self.keys.of(queue)
        return int(await self._run.one(_Eval("promote", (k.scheduled, k.retry, k.queue), (limit,))))

    async def heartbeat(self, queues: Sequence[str], consumer: str) -> None:
        """Record the consumer as alive (Redis TIME) in each queue it serves."""
        await self._run.run(_ops_heartbeat(self.keys, queues, consumer))

    async def recover_orphans(self, queue: str, timeout_ms: int) -> int:
        """Give back the in-flight jobs of consumers silent for ``timeout_ms``; returns how many came back."""
        k = self.keys.of(queue)
        now, beats = await self._run.run(
            [_Cmd(("TIME",)), _Cmd(("ZRANGE", k.consumers, 0, -1, "WITHSCORES"))]
        )
        stale = [_text(c) for c, beat in _pairs(beats) if _redis_ms(now) - beat >= timeout_ms]
        if not stale:
            return 0
        ops: list[_Op] = [
            _Eval("recover", (k.consumers, k.queue, k.inflight(c)), (c, timeout_ms)) for c in stale
        ]
        moved = sum(max(0, int(r)) for r in await self._run.run(ops))
        if moved:
            log.warning("recovered %d job(s) of %d silent consumer(s) on queue %s", moved, len(stale), queue)
        return moved

    async def inflight(self, queue: str, consumer: str) -> list[bytes]:
        """Every payload in the consumer's in-flight list of ``queue``, newest fetched first."""
        reply = await self._run.one(_Cmd(("LRANGE", self.keys.of(queue).inflight(consumer), 0, -1)))
        return [bytes(p) for p in reply]

    async def requeue_all(self, queue: str, consumer: str, payloads: Sequence[bytes] | None = None) -> int:
        """Give the consumer's in-flight jobs (all, or only ``payloads``) back to the queue, unspent."""
        return int(await self._run.one(_ops_requeue(self.keys, queue, consumer, payloads)))

    # admin verbs

    async def pause(self, queue: str) -> None:
        """Stop every consumer of the queue from fetching, until :meth:`resume`."""
        await self._run.one(_Cmd(("SET", self.keys.of(queue).paused, "1")))

    async def resume(self, queue: str) -> None:
        await self._run.one(_Cmd(("DEL", self.keys.of(queue).paused)))

    async def is_paused(self, queue: str) -> bool:
        return bool(await self._run.one(_Cmd(("EXISTS", self.keys.of(queue).paused))))

    async def known_queues(self) -> list[str]:
        """Names of every queue ever enqueued to in this namespace."""
        return sorted(_text(q) for q in await self._run.one(_Cmd(("SMEMBERS", self.keys.queues))))

    async def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        """Counts per queue (all known queues by default), in two round trips."""
        names = list(queues) if queues is not None else await self.known_queues()
        first = await self._run.run([op for q in names for op in _ops_stats_first(self.keys, q)])
        result: dict[str, QueueStats] = {}
        inflight_ops: list[_Op] = []
        owners: list[str] = []
        for i, q in enumerate(names):
            stats, consumers = _parse_stats(first[i * _STATS_FIRST : (i + 1) * _STATS_FIRST])
            result[q] = stats
            inflight_ops += [_Cmd(("LLEN", self.keys.of(q).inflight(c))) for c in consumers]
            owners += [q] * len(consumers)
        for q, length in zip(owners, await self._run.run(inflight_ops), strict=True):
            result[q]["in_flight"] += int(length)
        return result

    async def consumers(self, queues: Sequence[str] | None = None) -> list[ConsumerInfo]:
        """Every consumer of the queues (all known by default) with its last heartbeat and in-flight count."""
        names = list(queues) if queues is not None else await self.known_queues()
        replies = await self._run.run([op for q in names for op in _ops_consumers(self.keys, q)])
        found = [c for i, q in enumerate(names) for c in _parse_consumers(q, replies[2 * i : 2 * i + 2])]
        lengths = await self._run.run(
            [_Cmd(("LLEN", self.keys.of(c["queue"]).inflight(c["consumer"]))) for c in found]
        )
        for info, length in zip(found, lengths, strict=True):
            info["in_flight"] = int(length)
        return found

    async def rates(
        self, queue: str, resolution: Literal["second", "minute"] = "second", count: int = 60
    ) -> list[RatePoint]:
        """Jobs processed and failed per complete bucket, oldest first, cluster-wide.

        Args:
            resolution: ``second`` (:data:`RATE_SECONDS` kept) or ``minute`` (:data:`RATE_MINUTES` kept).
            count: how many buckets, ending with the last complete one.
        """
        return _parse_rates(await self._run.run(_ops_rates(self.keys, queue, resolution)), resolution, count)

    async def peek(
        self, queue: str, where: PeekWhere = "queued", limit: int = 20, start: int = 0
    ) -> list[tuple[bytes, float | None]]:
        """Jobs of a queue without taking them: ``queued`` in the order they will run, ``scheduled`` and
        ``retry`` by due time, ``dead`` oldest first; each with its due or death time (unix s) or None."""
        return _parse_peek(where, await self._run.one(_ops_peek(self.keys, queue, where, start, limit)))

    async def delete(self, queue: str, payloads: Sequence[bytes]) -> int:
        """Remove these payloads from the queue, scheduled, retry and dead; in-flight jobs are not touched."""
        if not payloads:
            return 0
        return sum(
            int(r) for r in await self._run.run(_ops_delete(self.keys, queue, payloads), transaction=True)
        )

    async def rate_use(self, key: str, period_ms: float) -> int:
        """Tokens of the shared window ``key`` granted within the last period (compare with its allowed)."""
        return _parse_rate_use(await self._run.run(_ops_rate_use(self.keys, key, period_ms)), period_ms)

    async def dead_list(self, queue: str, limit: int = 100) -> list[tuple[bytes, float]]:
        """The newest ``limit`` dead letters as ``(payload, died_at unix s)``."""
        reply = await self._run.one(_Cmd(("ZREVRANGE", self.keys.of(queue).dead, 0, limit - 1, "WITHSCORES")))
        return [(payload, score / 1000) for payload, score in _pairs(reply)]

    async def dead_retry(
        self,
        queue: str,
        payloads: Sequence[bytes] | None = None,
        new_payloads: Sequence[bytes] | None = None,
    ) -> int:
        """Move dead letters back onto the queue (all when ``payloads`` is None), optionally rewritten.

        Args:
            payloads: the dead letters to move, as :meth:`dead_list` returned them.
            new_payloads: what to enqueue instead of each (same length), e.g. with the attempt count reset.
        """
        if payloads is not None:
            return int(await self._run.one(_ops_dead_retry(self.keys, queue, payloads, new_payloads)))
        total = 0
        while moved := int(await self._run.one(_ops_dead_retry_oldest(self.keys, queue, DEAD_RETRY_CHUNK))):
            total += moved
        return total

    async def dead_purge(self, queue: str) -> int:
        """Delete every dead letter of the queue; returns how many there were."""
        dead = self.keys.of(queue).dead
        count, _ = await self._run.run([_Cmd(("ZCARD", dead)), _Cmd(("DEL", dead))], transaction=True)
        return int(count)

    # token window

    async def take_tokens(
        self,
        key: str,
        *,
        allowed: int,
        period_ms: float,
        hold_ms: float,
        want: int,
        min_tokens: int = 1,
        adaptive: bool = False,
        decrease_factor: float = 0.5,
        recover_per_s: float = 0.0,
        burst: int = 0,
    ) -> TokenReply:
        """One grant from the shared sliding window ``key`` (see DEVELOPERS.md, "The token window")."""
        log_key, meta_key = self.keys.rate(key)
        args: tuple[Arg, ...] = (
            allowed,
            repr(float(period_ms)),
            repr(float(hold_ms)),
            want,
            min_tokens,
            1 if adaptive else 0,
            repr(float(decrease_factor)),
            repr(float(recover_per_s)),
            burst,
        )
        return _parse_token_reply(await self._run.one(_Eval("take_tokens", (log_key, meta_key), args)))

    async def take_tokens_multi(
        self,
        key: str,
        wants: Sequence[tuple[str, int, int]],
        *,
        allowed: int,
        period_ms: float,
        hold_ms: float,
    ) -> list[tuple[int, int, int]]:
        """One grant per ``(sub key, want, min_tokens)`` from the windows of per-key limiter ``key``.

        Returns:
            ``(tokens, delay_us, start_us)`` per entry of ``wants``, in order (see ``take_tokens_multi.lua``).
        """
        if not wants:
            return []
        flat_keys: list[str] = []
        args: list[Arg] = [allowed, repr(float(period_ms)), repr(float(hold_ms))]
        for sub, want, min_tokens in wants:
            flat_keys += self.keys.keyed_rate(key, sub)
            args += [max(1, int(want)), max(1, int(min_tokens))]
        reply = await self._run.one(_Eval("take_tokens_multi", tuple(flat_keys), tuple(args)))
        return [(int(reply[i]), int(reply[i + 1]), int(reply[i + 2])) for i in range(0, len(reply), 3)]

    async def penalize_window(
        self, key: str, *, allowed: int, period_ms: float, decrease_factor: float, recover_per_s: float
    ) -> float:
        """Lower the shared effective rate of window ``key``; returns the new effective allowed."""
        _, meta_key = self.keys.rate(key)
        args: tuple[Arg, ...] = (
            allowed,
            repr(float(period_ms)),
            repr(float(decrease_factor)),
            repr(float(recover_per_s)),
        )
        return float(_text(await self._run.one(_Eval("penalize", (meta_key,), args))))


class SyncStore:
    """The blocking store for producers, admin tools and the heartbeat thread.

    It runs the same calls as :class:`RedisStore`; a heartbeat from a thread with its own client keeps
    beating while a worker's event loop is busy.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str = "flume",
        *,
        dead_max: int = 10_000,
        dead_ttl_ms: int = 7 * 24 * 3600 * 1000,
    ) -> None:
        _check_client(client)
        self.client = client
        self.keys = Keys(namespace)
        self.dead_max = dead_max
        self.dead_ttl_ms = dead_ttl_ms
        self._run = _SyncRunner(client)
        self._owns_client = False

    @classmethod
    def from_url(cls, url: str, namespace: str = "flume", *, socket_timeout_s: float = 30.0) -> SyncStore:
        try:
            plain = cluster_url(url)
            if plain is not None:
                client = cast(
                    redis.Redis,
                    redis.cluster.RedisCluster.from_url(plain, **_client_kwargs(socket_timeout_s)),  # type: ignore[no-untyped-call, unused-ignore]
                )
            else:
                client = redis.Redis.from_url(url, **_client_kwargs(socket_timeout_s))
        except ValueError as exc:
            raise ConfigError(
                f"redis_url {redact_url(url)!r} is not a valid Redis URL ({exc}); fix it"
            ) from None
        store = cls(client, namespace)
        store._owns_client = True
        return store

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue(self, queue: str, payloads: Sequence[bytes]) -> None:
        if payloads:
            self._run.run(_ops_enqueue(self.keys, queue, payloads))

    def schedule(self, queue: str, items: Sequence[tuple[bytes, float]]) -> None:
        if items:
            self._run.run(_ops_schedule(self.keys, queue, items, "at"))

    def schedule_in(self, queue: str, items: Sequence[tuple[bytes, float]]) -> None:
        if items:
            self._run.run(_ops_schedule(self.keys, queue, items, "in"))

    def cron_last(self, queue: str, schedule: str) -> int | None:
        """The last tick (unix ms) the cron schedule decided, or None if it never ran."""
        last = self._run.one(_Cmd(("GET", self.keys.of(queue).cron_last(schedule))))
        return None if last is None else int(last)

    def enqueue_unique(
        self,
        queue: str,
        jobs: Sequence[UniqueEnqueue],
        unique_for_ms: int,
        mode: Literal["now", "at", "in"] = "now",
    ) -> list[tuple[bool, str]]:
        """Like :meth:`RedisStore.enqueue_unique`."""
        if not jobs:
            return []
        return _parse_unique(self._run.run(_ops_enqueue_unique(self.keys, queue, jobs, unique_for_ms, mode)))

    def heartbeat(self, queues: Sequence[str], consumer: str) -> None:
        self._run.run(_ops_heartbeat(self.keys, queues, consumer))

    def pause(self, queue: str) -> None:
        self._run.one(_Cmd(("SET", self.keys.of(queue).paused, "1")))

    def resume(self, queue: str) -> None:
        self._run.one(_Cmd(("DEL", self.keys.of(queue).paused)))

    def is_paused(self, queue: str) -> bool:
        return bool(self._run.one(_Cmd(("EXISTS", self.keys.of(queue).paused))))

    def known_queues(self) -> list[str]:
        return sorted(_text(q) for q in self._run.one(_Cmd(("SMEMBERS", self.keys.queues))))

    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        names = list(queues) if queues is not None else self.known_queues()
        first = self._run.run([op for q in names for op in _ops_stats_first(self.keys, q)])
        result: dict[str, QueueStats] = {}
        inflight_ops: list[_Op] = []
        owners: list[str] = []
        for i, q in enumerate(names):
            stats, consumers = _parse_stats(first[i * _STATS_FIRST : (i + 1) * _STATS_FIRST])
            result[q] = stats
            inflight_ops += [_Cmd(("LLEN", self.keys.of(q).inflight(c))) for c in consumers]
            owners += [q] * len(consumers)
        for q, length in zip(owners, self._run.run(inflight_ops), strict=True):
            result[q]["in_flight"] += int(length)
        return result

    def consumers(self, queues: Sequence[str] | None = None) -> list[ConsumerInfo]:
        names = list(queues) if queues is not None else self.known_queues()
        replies = self._run.run([op for q in names for op in _ops_consumers(self.keys, q)])
        found = [c for i, q in enumerate(names) for c in _parse_consumers(q, replies[2 * i : 2 * i + 2])]
        lengths = self._run.run(
            [_Cmd(("LLEN", self.keys.of(c["queue"]).inflight(c["consumer"]))) for c in found]
        )
        for info, length in zip(found, lengths, strict=True):
            info["in_flight"] = int(length)
        return found

    def rates(
        self, queue: str, resolution: Literal["second", "minute"] = "second", count: int = 60
    ) -> list[RatePoint]:
        return _parse_rates(self._run.run(_ops_rates(self.keys, queue, resolution)), resolution, count)

    def peek(
        self, queue: str, where: PeekWhere = "queued", limit: int = 20, start: int = 0
    ) -> list[tuple[bytes, float | None]]:
        return _parse_peek(where, self._run.one(_ops_peek(self.keys, queue, where, start, limit)))

    def delete(self, queue: str, payloads: Sequence[bytes]) -> int:
        if not payloads:
            return 0
        return sum(int(r) for r in self._run.run(_ops_delete(self.keys, queue, payloads), transaction=True))

    def rate_use(self, key: str, period_ms: float) -> int:
        return _parse_rate_use(self._run.run(_ops_rate_use(self.keys, key, period_ms)), period_ms)

    def window_counts(self, key: str) -> tuple[int, int]:
        """Grants and waits (grants that were reservations) of the shared window ``key`` while it is active."""
        _, meta = self.keys.rate(key)
        grants, waits = self._run.one(_Cmd(("HMGET", meta, "seq", "waits")))
        return int(grants or 0), int(waits or 0)

    def dead_list(self, queue: str, limit: int = 100) -> list[tuple[bytes, float]]:
        reply = self._run.one(_Cmd(("ZREVRANGE", self.keys.of(queue).dead, 0, limit - 1, "WITHSCORES")))
        return [(payload, score / 1000) for payload, score in _pairs(reply)]

    def dead_retry(
        self,
        queue: str,
        payloads: Sequence[bytes] | None = None,
        new_payloads: Sequence[bytes] | None = None,
    ) -> int:
        if payloads is not None:
            return int(self._run.one(_ops_dead_retry(self.keys, queue, payloads, new_payloads)))
        total = 0
        while moved := int(self._run.one(_ops_dead_retry_oldest(self.keys, queue, DEAD_RETRY_CHUNK))):
            total += moved
        return total

    def dead_purge(self, queue: str) -> int:
        dead = self.keys.of(queue).dead
        count, _ = self._run.run([_Cmd(("ZCARD", dead)), _Cmd(("DEL", dead))], transaction=True)
        return int(count)


# ------------------------------------------------------------------------------------- the token window


class RedisTokenWindow:
    """A :class:`~flume_rx.operators.TokenWindow` shared by every process through Redis.

    At most ``allowed`` items start in any sliding ``period_s``, across all processes and hosts, with time
    from Redis. A grant that cannot start now is a reservation (``delay_s > 0``), so each Redis call hands
    out as many tokens as the caller can use. With ``adaptive=True``, :meth:`penalize` (the downstream
    refused a call) multiplies the shared rate by ``decrease_factor``; it recovers by ``recover_per_s``
    tokens per period each second, up to ``allowed``.

    Args:
        store: the store whose client carries the calls.
        key: the window's name; every window with the same key and namespace shares one limit.
        allowed: items allowed to start per period.
        period_s: the sliding period.
        hold_s: how long after its start a grant may still be used; utilization is period / (period + hold).
        adaptive: lower the rate on :meth:`penalize` and let it recover.
        decrease_factor: multiplier applied by a penalty (at most once per period).
        recover_per_s: tokens per period regained each second; ``allowed * 0.05`` by default (as
            :class:`~flume_rx.operators.InProcessWindow`).
        burst: pace grants to one token every ``period_s / allowed``, at most ``burst`` at once, so the window
            fills smoothly rather than in one burst per period (None: no pacing, the plain sliding window).

    >>> window = RedisTokenWindow(store, "ses", allowed=400, period_s=1.0)  # doctest: +SKIP
    >>> await window.take_async(10, min_tokens=5)  # doctest: +SKIP
    Grant(tokens=10, delay_s=0.0, hold_s=0.02)
    """

    def __init__(
        self,
        store: RedisStore,
        key: str,
        allowed: int,
        period_s: float,
        *,
        hold_s: float = 0.02,
        adaptive: bool = False,
        decrease_factor: float = 0.5,
        recover_per_s: float | None = None,
        burst: int | None = None,
    ) -> None:
        # ValueError, as InProcessWindow raises: the two are interchangeable behind TokenWindow.
        if allowed < 1:
            raise ValueError(f"allowed must be >= 1 token per period (got {allowed})")
        if not (period_s > 0 and math.isfinite(period_s)):
            raise ValueError(f"period_s must be a positive number of seconds (got {period_s})")
        if not (hold_s >= 0 and math.isfinite(hold_s)):
            raise ValueError(f"hold_s must be >= 0 seconds (got {hold_s})")
        if not 0 < decrease_factor < 1:
            raise ValueError(f"decrease_factor must be within (0, 1) (got {decrease_factor})")
        if recover_per_s is not None and not recover_per_s >= 0:
            raise ValueError(f"recover_per_s must be >= 0 tokens per second (got {recover_per_s})")
        store.keys.rate(key)  # validates the key now rather than at the first take
        self.store = store
        self.key = key
        self.allowed = allowed
        self.period_s = period_s
        self.hold_s = hold_s
        self.adaptive = adaptive
        self.decrease_factor = decrease_factor
        self.recover_per_s = allowed * 0.05 if recover_per_s is None else recover_per_s
        if burst is not None and burst < 1:
            raise ValueError(f"burst must be >= 1 token or None for no pacing (got {burst})")
        self.burst = burst or 0
        self._effective = float(allowed)
        self._lock = threading.Lock()

    async def take_async(self, tokens: int, min_tokens: int = 1) -> Grant:
        """One grant of between ``min(tokens, min_tokens)`` and ``tokens`` tokens (clamped to the rate).

        While Redis is unreachable it waits with backoff, as fetch and settle do: an outage must not end the
        pipeline the throttle sits in.
        """
        outage = Outage(f"rate limiter {self.key!r}")
        while True:
            try:
                reply = await self.take_reply(tokens, min_tokens)
                break
            except StoreError as exc:
                await asyncio.sleep(outage.failed(exc))
        outage.ok()
        return Grant(tokens=reply.tokens, delay_s=reply.delay_us / 1e6, hold_s=reply.hold_us / 1e6)

    async def take_reply(self, tokens: int, min_tokens: int = 1) -> TokenReply:
        """Like :meth:`take_async`, with the grant's place on the Redis clock (for tests and telemetry)."""
        if tokens < 1:
            raise ValueError(f"tokens must be >= 1 (got {tokens})")
        if min_tokens < 1:
            raise ValueError(f"min_tokens must be >= 1 (got {min_tokens})")
        reply = await self.store.take_tokens(
            self.key,
            allowed=self.allowed,
            period_ms=self.period_s * 1000,
            hold_ms=self.hold_s * 1000,
            want=tokens,
            min_tokens=min(min_tokens, tokens),
            adaptive=self.adaptive,
            decrease_factor=self.decrease_factor,
            recover_per_s=self.recover_per_s,
            burst=self.burst,
        )
        with self._lock:
            self._effective = reply.effective_allowed
        return reply

    def take(self, tokens: int, min_tokens: int = 1) -> Observable[Grant]:
        """Emits one :class:`Grant` and completes; each subscription asks Redis once."""
        return _defer_async(lambda: self.take_async(tokens, min_tokens))

    async def penalize_async(self) -> float:
        """Report a refusal by the downstream; returns the new effective allowed per period."""
        if not self.adaptive:
            return float(self.allowed)
        effective = await self.store.penalize_window(
            self.key,
            allowed=self.allowed,
            period_ms=self.period_s * 1000,
            decrease_factor=self.decrease_factor,
            recover_per_s=self.recover_per_s,
        )
        with self._lock:
            self._effective = effective
        log.info("rate limiter %s penalized: %.1f per %.3f s", self.key, effective, self.period_s)
        return effective

    def penalize(self) -> Observable[float]:
        return _defer_async(self.penalize_async)

    def current_rate(self) -> float:
        """The effective allowed per period as of the last reply from Redis (``allowed`` before any)."""
        with self._lock:
            return self._effective


def _defer_async(make: Callable[[], Coroutine[Any, Any, _T]]) -> Observable[_T]:
    """An Observable that runs the coroutine ``make()`` on the event loop per subscription.

    Subscribing from the loop's thread schedules it there; from another thread, it is handed to the loop
    that was running where the Observable was made.
    """
    try:
        home: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        home = None

    def factory(_: abc.SchedulerBase | None) -> Observable[_T]:
        coro = make()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and (home is None or running is home):
            return reactivex.from_future(asyncio.ensure_future(coro))
        if home is not None:
            future: ThreadFuture[_T] = asyncio.run_coroutine_threadsafe(coro, home)
            return reactivex.from_future(future)  # type: ignore[arg-type]
        coro.close()
        raise RuntimeError("RedisTokenWindow must be used from a thread running an asyncio event loop")

    return reactivex.defer(factory)
