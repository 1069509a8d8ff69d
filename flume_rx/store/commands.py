"""What the stores send and what they read back: pure functions from a verb's arguments to Redis operations
(``_ops_*``), parsers of the replies (``_parse_*``), and the public types they carry. The read side of the
admin verbs (stats, rates, consumers, peek) is :mod:`flume_rx.store.queries`.

The async and the sync store build every call with these functions and read replies with these parsers, so
the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import msgpack

from flume_rx.model.codec import DEFAULT_MAX_PAYLOAD_BYTES
from flume_rx.store.keys import Keys
from flume_rx.store.scripts import Arg, _Cmd, _Eval, _Op

DEAD_RETRY_CHUNK = 1000

LATENCY_SAMPLES = 1000
"""Recent enqueue-to-settle latencies kept per queue (a list trimmed at each settle) for p50/p99."""
DEFAULT_DEAD_MAX = 10_000
"""Most dead letters kept per queue (the oldest go first)."""
DEFAULT_DEAD_TTL_MS = 7 * 24 * 3600 * 1000
"""How long a dead letter is kept."""

RATE_SECONDS = 120
"""Per-second processed/failed buckets kept per queue (a ring in one hash, written by ``settle.lua``)."""

RATE_MINUTES = 60
"""Per-minute processed/failed buckets kept per queue (a ring in one hash, written by ``settle.lua``)."""


# ------------------------------------------------------------------------------------------- public types


@dataclass(slots=True)
class Settlement:
    """One outcome for :meth:`RedisStore.settle` (made once per job, and read-only once made: not frozen
    only because a frozen dataclass sets each field through ``object.__setattr__``, ~10,000 instructions
    per job for this record alone; change one with :func:`dataclasses.replace`).

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
    outcome: tuple[str, bytes, int, Literal["done", "dead", "cancelled"]] | None = None
    """``(job_id, result, keep_ms, state)`` of a job whose outcome is kept (its worker keeps results, or it was
    aborted): in the same step as the settlement, its record says ``done`` with the msgpack-encoded
    ``result``, or ``dead``/``cancelled`` with the job's record, for ``keep_ms``, and the record's channel
    announces it (``Flume.result`` waits there)."""
    handoffs: tuple[Handoff, ...] = ()
    """A workflow's next job or group outcome, written in the same step (see :class:`Handoff`)."""


@dataclass(frozen=True, slots=True)
class Handoff:
    """What a settled job of a workflow hands on, in the same script call as its own settlement, and only if
    that settlement took the job out of the in-flight list (so a hand-off happens exactly once).

    With ``group`` empty, ``payload`` (a new job) goes onto ``queue``. With ``group`` set, ``outcome`` (msgpack)
    is recorded as member ``member`` of the group whose callback goes to ``queue``; the member that completes
    the group enqueues the callback. With ``stopped`` set (a job id of ``queue``), that job, a later step of
    a chain that stopped, is recorded as cancelled with ``payload`` as its record, for ``keep_ms``.
    """

    queue: str
    payload: bytes = b""
    group: str = ""
    member: int = 0
    outcome: bytes = b""
    stopped: str = ""
    keep_ms: int = 0
    callback: str = ""
    """With ``group``: the callback's job id, whose record says dead if the group's outcomes are too large
    to hand on ("" for members of groups made before it was carried)."""
    to_come: str = ""
    """With ``payload`` (a chain's next step): that step's job id. Its record says it is to come until this
    push; a step cancelled before its turn is not pushed."""


@dataclass(frozen=True, slots=True)
class UniqueEnqueue:
    """One job of :meth:`RedisStore.enqueue_unique`: added unless another job holds its ``unique_key``."""

    job_id: str
    payload: bytes
    unique_key: str | None
    """None: an ordinary job, always added (so a bulk call can mix unique and ordinary jobs)."""
    due_s: float = 0.0
    """Unix seconds when the call's mode is ``at``, seconds from Redis TIME when ``in``; unused for ``now``."""


GiveBack = tuple[int, int, int, int, int | None]
"""What a take gives back of one earlier grant: ``(seq, start_us, tokens, unused, started_within_us)``."""


class TokenReply(NamedTuple):
    """The raw reply of ``take_tokens.lua``: a grant plus where it sits on the Redis clock."""

    tokens: int
    delay_us: int
    hold_us: int
    effective_allowed: float
    start_us: int
    """The grant's start time ``g`` in unix microseconds (Redis TIME)."""
    seq: int = 0
    """The grant's number in its window: with ``start_us`` and ``tokens``, what names it when a later take gives
    back tokens of it that will never start."""
    cut_at_us: int = 0
    """When (Redis TIME, unix us) the latest refusal of an adaptive window cut the rate this grant was decided
    at; 0 when none did."""
    later: tuple[LaterSlice, ...] = ()
    """The take's later grants (asked for with ``slice_tokens``), in order."""


class LaterSlice(NamedTuple):
    """A later grant of one take (``take_tokens.lua``'s slices): a grant of its own in the window."""

    tokens: int
    delay_us: int
    start_us: int
    seq: int


class RefusalReply(NamedTuple):
    """The reply of ``penalize.lua``: the adaptive rate after some refusals and what it was aimed at."""

    effective_allowed: float
    ceiling: float
    """The accepted rate the probe restarts below (see ``flume_rx.operators.ceiling_after_refusal``)."""
    accepted: float | None
    """Tokens per period the downstream accepted over the last period, as measured; None if unmeasurable."""
    at_us: int
    """When, in unix microseconds (Redis TIME)."""


# ------------------------------------------------------------------------------ call builders and parsers
# Each store verb is a pure function from arguments to the Redis operations it needs, shared by the async
# and the sync store; each returns operations that go to Redis in one round trip.


def _ops_enqueue(keys: Keys, queue: str, payloads: Sequence[bytes], *, register: bool = True) -> list[_Op]:
    # One LPUSH for the whole bulk: Redis decides once whether it has the memory, so a full Redis writes all
    # of the jobs or none of them (chunks were decided one by one: the first ones landed, then the call
    # failed). A plain command, not a script: Redis ran the script call for one job in about 20 us against 1 us
    # for the LPUSH, and a producer enqueueing one job per call made a tenth more calls a second without it
    # (docs/performance.md, "Nineteenth round"). The queue's registration, when due, goes in the same MULTI
    # (the stores ask for a transaction); without it the enqueue is one command.
    return [*_registration(keys, queue, register), _Cmd(("LPUSH", keys.of(queue).queue, *payloads))]


def _ops_schedule(
    keys: Keys,
    queue: str,
    items: Sequence[tuple[bytes, float]],
    mode: Literal["at", "in"],
    *,
    register: bool = True,
) -> list[_Op]:
    k = keys.of(queue)
    flat: list[Arg] = [mode]
    for payload, when_s in items:
        flat += [round(when_s * 1000), payload]
    return [*_registration(keys, queue, register), _Eval("schedule", (k.scheduled,), tuple(flat))]


def _registration(keys: Keys, queue: str, register: bool) -> list[_Op]:
    """The SADD that registers ``queue`` in the namespace's set of queues, when ``register``."""
    return [_Cmd(("SADD", keys.queues, queue))] if register else []


def _ops_fetch(
    keys: Keys,
    queue: str,
    consumer: str,
    n: int,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    dead_max: int = DEFAULT_DEAD_MAX,
    dead_ttl_ms: int = DEFAULT_DEAD_TTL_MS,
) -> _Eval:
    k = keys.of(queue)
    return _Eval(
        "fetch",
        (k.queue, k.inflight(consumer), k.paused, k.consumers, k.dead, k.stats, k.arrivals(consumer)),
        (consumer, n, max_payload_bytes, dead_max, dead_ttl_ms, queue),
    )


def _handoff_args(keys: Keys, h: Handoff, outcome: int, before: int, extra_keys: list[str]) -> list[object]:
    """One hand-off as ``lua/_handoff.lua`` takes it, its keys appended to ``extra_keys`` (which follow
    ``before`` keys of the script's own)."""
    target = keys.of(h.queue)
    if h.group:
        # The callback's dead letters, record and stats are written only when the outcomes are too large.
        record = target.record(h.callback) if h.callback else target.group(h.group)
        extra_keys += [target.group(h.group), target.queue, target.dead, record, target.stats]
        return [outcome, "join", before + len(extra_keys) - 4, h.outcome, h.member]
    if h.stopped:
        extra_keys.append(target.record(h.stopped))
        return [outcome, "stop", before + len(extra_keys), h.payload, max(1, h.keep_ms)]
    extra_keys.append(target.queue)
    at = before + len(extra_keys)
    if h.to_come:
        extra_keys.append(target.record(h.to_come))
        return [outcome, "push", at, h.payload, at + 1]
    return [outcome, "push", at, h.payload, 0]


def _ops_cancel(
    keys: Keys,
    queue: str,
    job_id: str,
    payload: bytes,
    keep_ms: int,
    handoffs: Sequence[Handoff] = (),
    to_come: bytes = b"",
) -> _Eval:
    k = keys.of(queue)
    base = (k.queue, k.scheduled, k.retry, k.record(job_id))
    extra: list[str] = []
    flow: list[object] = []
    for h in handoffs:
        flow += _handoff_args(keys, h, 1, len(base), extra)
    blob: bytes = msgpack.packb(flow, use_bin_type=False) if flow else b""
    return _Eval("cancel", (*base, *extra), (payload, keep_ms, blob, to_come))


def _ops_abort(keys: Keys, job_id: str, keep_ms: int, now_ms: int) -> list[_Op]:
    """Record the abort of ``job_id`` until ``keep_ms`` from now (dropping lapsed ones), then tell the workers
    listening; the last reply is how many worker processes heard it."""
    return [
        _Cmd(("ZADD", keys.aborts, now_ms + keep_ms, job_id)),
        _Cmd(("ZREMRANGEBYSCORE", keys.aborts, "-inf", now_ms)),
        _Cmd(("PUBLISH", keys.abort_channel, job_id)),
    ]


def _ops_aborts_asked(keys: Keys, now_ms: int) -> _Op:
    return _Cmd(("ZRANGEBYSCORE", keys.aborts, f"({now_ms}", "+inf", "WITHSCORES"))


def _parse_aborts_asked(reply: Any) -> list[tuple[str, float]]:
    """The aborts asked and not lapsed: (job id, when the ask lapses in epoch seconds)."""
    return [(member.decode("utf-8", errors="replace"), score / 1000) for member, score in _pairs(reply)]


def _ops_settle(
    keys: Keys, queue: str, consumer: str, settlements: Sequence[Settlement], dead_max: int, dead_ttl_ms: int
) -> _Eval:
    k = keys.of(queue)
    flat: list[object] = []
    base = (k.inflight(consumer), k.queue, k.retry, k.dead, k.stats, k.seconds, k.minutes, k.latency)
    unique_keys: list[str] = []
    kept: list[object] = []
    flow: list[object] = []
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
        if s.outcome is not None:
            job_id, result, keep_ms, state = s.outcome
            unique_keys.append(k.record(job_id))
            kept += [len(flat) // 6, len(base) + len(unique_keys), result, max(1, int(keep_ms)), state]
        for h in s.handoffs:
            flow += _handoff_args(keys, h, len(flat) // 6, len(base), unique_keys)
    # Redis's cmsgpack reads only the old raw type, hence use_bin_type=False (bytes stay bytes in Lua).
    outcomes: bytes = msgpack.packb(flat, use_bin_type=False)
    kept_blob: bytes = msgpack.packb(kept, use_bin_type=False) if kept else b""
    flow_blob: bytes = msgpack.packb(flow, use_bin_type=False) if flow else b""
    # Latency samples ride in the same script call (formatted here: one short string each, newest last).
    samples = [b"%.1f" % s.latency_ms for s in settlements if s.latency_ms is not None]
    latencies: bytes = msgpack.packb(samples[-LATENCY_SAMPLES:], use_bin_type=False) if samples else b""
    return _Eval(
        "settle",
        (*base, *unique_keys),
        (dead_max, dead_ttl_ms, outcomes, latencies, LATENCY_SAMPLES, kept_blob, flow_blob),
    )


def _ops_enqueue_unique(
    keys: Keys,
    queue: str,
    jobs: Sequence[UniqueEnqueue],
    unique_for_ms: int,
    mode: Literal["now", "at", "in"],
) -> list[_Op]:
    k = keys.of(queue)
    unique_keys: list[str] = []
    flat: list[Arg] = [mode, max(1, int(unique_for_ms))]
    for job in jobs:
        index = 0
        if job.unique_key is not None:
            unique_keys.append(k.unique(job.unique_key))
            index = 2 + len(unique_keys)
        flat += [index, job.job_id, job.payload, 0 if mode == "now" else round(job.due_s * 1000)]
    return [
        _Cmd(("SADD", keys.queues, queue)),
        _Eval("enqueue_unique", (k.queue, k.scheduled, *unique_keys), tuple(flat)),
    ]


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
    keys: Keys,
    queues: Sequence[str],
    consumer: str,
    n: int,
    quotas: Sequence[int],
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    dead_max: int = DEFAULT_DEAD_MAX,
    dead_ttl_ms: int = DEFAULT_DEAD_TTL_MS,
) -> _Eval:
    if len(quotas) != len(queues):
        raise ValueError(f"fetch_weighted got {len(queues)} queues but {len(quotas)} quotas; pass one each")
    flat_keys: list[str] = []
    per_queue: list[Arg] = []
    for queue, quota in zip(queues, quotas, strict=True):
        k = keys.of(queue)
        flat_keys += [k.queue, k.inflight(consumer), k.paused, k.consumers, k.dead, k.stats]
        per_queue += [max(0, int(quota)), queue]
    return _Eval(
        "fetch_weighted",
        tuple(flat_keys),
        (consumer, n, max_payload_bytes, dead_max, dead_ttl_ms, *per_queue),
    )


def _parse_unique(replies: Sequence[Any]) -> list[tuple[bool, str]]:
    # The first reply is the SADD of the queue name; the second the script's flat (added, id) pairs.
    pairs = replies[1]
    return [(bool(int(pairs[i])), _text(pairs[i + 1])) for i in range(0, len(pairs), 2)]


def _ops_heartbeat(keys: Keys, queues: Sequence[str], consumer: str) -> list[_Op]:
    # One call per queue rather than one call over all queues: keys of different queues live on different
    # cluster slots, and a pipeline still makes it one round trip.
    return [_Eval("heartbeat", (keys.of(q).consumers,), (consumer,)) for q in queues]


def _ops_requeue(keys: Keys, queue: str, consumer: str, payloads: Sequence[bytes] | None) -> _Eval:
    k = keys.of(queue)
    if payloads:
        return _Eval("requeue_all", (k.consumers, k.queue, k.inflight(consumer)), (consumer, *payloads))
    # All: with the arrivals list, where a wait that ended as the process stopped may have left a job.
    return _Eval(
        "requeue_all", (k.consumers, k.queue, k.inflight(consumer), k.arrivals(consumer)), (consumer,)
    )


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
    tokens, delay_us, hold_us, effective, start_us, seq, cut_at_us = reply[:7]
    rest = reply[7:]
    return TokenReply(
        int(tokens),
        int(delay_us),
        int(hold_us),
        float(_text(effective)),
        int(start_us),
        int(seq),
        int(cut_at_us),
        tuple(LaterSlice(*(int(field) for field in rest[i : i + 4])) for i in range(0, len(rest) - 3, 4)),
    )
